"""Phase 2, training: the loop (`trainer.TrainingRun`) over a task (`tasks`), with the run
directory (`rundir`, `checkpoint`), logging (`tracking`), precision policy, metrics, the exported
model directory (`export`) and the curves of a run (`plot`). Depends on `config`, `data`, `models`.
"""
