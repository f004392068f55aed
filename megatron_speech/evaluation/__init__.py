"""Evaluation (contract 9): speech-LM likelihood tasks and spoken QA in the paper's modalities
(S→S, S→T, T→T) for a Megatron checkpoint or its Hugging Face export, and the builder that turns a
text task into a spoken one.

- ``tasks``: task files (likelihood / QA items, their spoken fields), file:line errors;
- ``prompts``: items → LM ids per modality, laid out as the pre-training data is;
- ``likelihood``: continuation log-probabilities and accuracy;
- ``qa``: greedy answers in text or speech, exact match and "contains";
- ``model``: the model under evaluation, from either kind of checkpoint;
- ``run``: one YAML a run, the report and its table;
- ``spoken``: text task → spoken task (voices or recorded audio, then a speech tokenizer).
"""
