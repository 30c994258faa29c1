"""The run directory on disk: everything that writes or reads it.

    directory.py        RunDir and StageDir: run.json, each stage's manifest and metrics
    checkpoint.py       checkpoints (written whole, swapped in atomically) and CheckpointKeys
    lock.py             StageLock: one writer per stage directory
    outputs.py          opening a complete stage as a typed artifact: the one reader of a run
    tensorboard_log.py  a stage's optional TensorBoard events

(The atomic write and PNG encoding these use are files.py, one level up: the mesh exporters use
them too.)
"""
