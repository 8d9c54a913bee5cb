"""Training, in small parts that every model family and every process shares:

    config.py       the training values, presets, and how flags, presets and a saved run combine
    optim.py        torch's AdamW and Muon over the model's parameter groups; the learning-rate schedule
    batches.py      batch sources: random windows of the token files
    step.py         one optimizer step: autocast, gradient accumulation, loss scaling, clipping
    evaluate.py     mean validation loss over fixed batches, averaged over processes
    stopping.py     iterations, a time budget turned into iterations, Ctrl-C
    distributed.py  several processes under torchrun: DistributedDataParallel, rank-0 writes
    metrics.py      metrics.jsonl and the progress line (loss.png: gptlab.pictures)
    trainer.py      the loop that drives them; gptlab.train() calls it
"""
