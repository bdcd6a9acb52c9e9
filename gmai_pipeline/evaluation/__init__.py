"""Benchmark evaluation of a trained stage, as VLMEvalKit prompts and scores by default (plain Python).

- `questions`: benchmark files (every layout `gmai_pipeline.benchmarks` finds) -> question sets with
  VLMEvalKit's prompts; the GPU job (`training_jobs/evaluate.py`) reads only these files.
- `matching`: VLMEvalKit's answer extraction (`can_infer*`, yes/no) and LLaVA-Med's open-answer recall.
- `scoring`: a prediction file scored as VLMEvalKit's evaluator reads it; `report_acc` tables.
- `results`: VLMEvalKit's result-file layout (`<model>/<model>_<dataset>.xlsx`, `_acc.csv`).
- `report`, `paper`: the paper's table shapes (Tables 4-8), charts, the Table 7 comparison.
- `run`: predictions of one stage -> every file and table above.
"""
