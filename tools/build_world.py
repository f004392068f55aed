"""Write the fictional world of the paper in miniature: prose (text only), questions and stories.

    .venv/bin/python tools/build_world.py work/world [--people 200] [--seed 0]

Outputs facts.jsonl, corpus.jsonl (text documents), qa.jsonl, fact_choice.jsonl and cloze.jsonl (task files, contract
9: turn them into spoken tasks with tools/build_spoken_task.py) and world.json.
"""

import argparse
import json

from megatron_speech.data.world import WorldConfig, write_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output_dir")
    defaults = WorldConfig()
    parser.add_argument("--people", type=int, default=defaults.people)
    parser.add_argument("--places", type=int, default=defaults.places)
    parser.add_argument("--stories", type=int, default=defaults.stories)
    parser.add_argument("--biographies", type=int, default=defaults.biographies, help="biographies a person")
    parser.add_argument("--qa-in-text", type=float, default=defaults.qa_in_text,
                        help="share of the people whose questions and answers are text documents too")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args()
    config = WorldConfig(people=args.people, places=args.places, stories=args.stories, seed=args.seed,
                         biographies=args.biographies, qa_in_text=args.qa_in_text)
    print(json.dumps(write_world(config, args.output_dir), indent=2))


if __name__ == "__main__":
    main()
