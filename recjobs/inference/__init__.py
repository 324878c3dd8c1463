"""Phase 3, using what was trained: `recommend.Recommender` reads an exported model directory
(`recjobs.training.export`) and answers top-k and score queries, in-process or as a batch job.
"""
