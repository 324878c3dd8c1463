"""The data layer: reading the input tables, encoding ids, which rank holds which interactions
(`shards`), batching, example data sets."""

from recjobs.data.batches import epoch_batches, steps_per_epoch
from recjobs.data.dataset import TaskData, load_task_data
from recjobs.data.features import Features
from recjobs.data.movielens import convert_movielens
from recjobs.data.synth import generate_tables, write_dataset
from recjobs.data.tables import Encoders, Vocabulary, read_table, write_table

__all__ = [
    "Encoders",
    "Features",
    "TaskData",
    "Vocabulary",
    "convert_movielens",
    "epoch_batches",
    "generate_tables",
    "load_task_data",
    "read_table",
    "steps_per_epoch",
    "write_dataset",
    "write_table",
]
