"""Evaluation items → LM ids in each modality, laid out as the pre-training data lays them out.

Modalities are named input→output, as in the paper: ``s2s`` (speech in, speech out), ``s2t``
(speech in, text out), ``t2t`` (the text reference). Every prompt starts with end-of-document, as
every document does in a packed training sequence, and segments become ids through the tokenizer's
``encode``, the rule of the sample layouts (contract 5):

- text after speech starts with its space, text before speech ends with one, as synthesis splits a
  document (``Today is `` <speech> `` today``): an S→T continuation is the interleaved layout's
  ``<|begin_of_audio|> context <|end_of_audio|> ␠ending``;
- an S→S continuation goes on in the same audio segment, as one spoken story would:
  ``<|begin_of_audio|> context ending`` (the ending's codes are scored; no end-of-audio);
- a QA template (``"Question: {question}\\nAnswer:"``) takes the question as text or as an audio
  segment; a spoken answer starts ``Answer: <|begin_of_audio|>``, a text answer is generated after
  ``Answer:``. Few-shot examples come first, in the same modality, separated by a blank line.
"""

from __future__ import annotations

from megatron_speech.evaluation.tasks import LikelihoodItem, QAItem
from megatron_speech.lm_tokenizer import AudioSegment, Segment, SpeechTextTokenizer, TextSegment, normalize_segments

MODALITIES = ("s2s", "s2t", "t2t")
SHOT_SEPARATOR = "\n\n"


def check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")


def speech_in(modality: str) -> bool:
    return modality[0] == "s"


def speech_out(modality: str) -> bool:
    return modality[-1] == "s"


def missing_speech(item: LikelihoodItem | QAItem, modality: str) -> str | None:
    """The spoken field a modality needs and the item lacks, or None."""
    if isinstance(item, LikelihoodItem):
        needs = [("context_speech", speech_in(modality)), ("candidates_speech", speech_out(modality))]
    else:
        needs = [("question_speech", speech_in(modality))]
    return next((name for name, needed in needs if needed and getattr(item, name) is None), None)


# ---- likelihood -------------------------------------------------------------------------------


def likelihood_requests(item: LikelihoodItem, modality: str, tokenizer: SpeechTextTokenizer) -> list[tuple[list[int], list[int]]]:
    """(prefix ids, continuation ids) for each candidate; the continuation is what is scored."""
    check_modality(modality)
    eod = tokenizer.eod
    if modality == "s2s":
        prefix = [eod, tokenizer.boa, *tokenizer.audio_ids(item.context_speech).tolist()]
        return [(prefix, tokenizer.audio_ids(codes).tolist()) for codes in item.candidates_speech]
    context = AudioSegment(item.context_speech) if speech_in(modality) else TextSegment(item.context.rstrip())
    prefix = [eod, *tokenizer.encode([context])]
    return [(prefix, tokenizer.encode([TextSegment(" " + c.strip())])) for c in item.candidates]


# ---- generative QA ----------------------------------------------------------------------------


def _question(template: str, item: QAItem, modality: str) -> list[Segment]:
    before, marker, after = template.partition("{question}")
    if not marker:
        raise ValueError(f"QA template {template!r} has no {{question}}")
    question = AudioSegment(item.question_speech) if speech_in(modality) else TextSegment(item.question)
    return [TextSegment(before), question, TextSegment(after)]


def _answer(item: QAItem, modality: str) -> list[Segment]:
    """A few-shot example's answer: its first answer, spoken or written."""
    if speech_out(modality):
        if item.answers_speech is None:
            raise ValueError(f"few-shot item {item.id!r} has no answers_speech_tokens for {modality}")
        return [TextSegment(" "), AudioSegment(item.answers_speech[0])]
    return [TextSegment(" " + item.answers[0])]


def qa_prompt(item: QAItem, modality: str, tokenizer: SpeechTextTokenizer, template: str,
              shots: list[QAItem] = ()) -> list[int]:
    """The prompt ids; a spoken answer's prompt ends in ``<|begin_of_audio|>``."""
    check_modality(modality)
    segments: list[Segment] = []
    for shot in shots:
        segments += [*_question(template, shot, modality), *_answer(shot, modality), TextSegment(SHOT_SEPARATOR)]
    segments += _question(template, item, modality)
    if speech_out(modality):
        segments.append(TextSegment(" "))
    # adjacent text is one segment, tokenized as one run of text, as in a training document
    ids = [tokenizer.eod, *tokenizer.encode(normalize_segments(segments))]
    return ids + [tokenizer.boa] if speech_out(modality) else ids
