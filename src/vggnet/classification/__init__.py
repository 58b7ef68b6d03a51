"""Classification: §3 (training, §3.1; testing, §3.2) and the experiments of §4.

    task.py      `ClassificationTask`: the engine's §3.1 head (cross-entropy, top-1 error drives the schedule)
    train.py     `train(config)`: the engine with that task
    evaluate.py  dense / multi-crop / centre-crop evaluation, multi-scale, fusion (`evaluate`, `validate`)
    results.py   top-k errors, `EvalResult` (multi-scale, "both" and fused posteriors), saved posteriors
    predict.py   `Predictor` / `predict`: the top-k classes of image files
    cli.py       `vgg train`, `vgg eval`, `vgg predict`

The public names are exported from `vggnet` itself (`vggnet.train`, `vggnet.evaluate`,
`vggnet.Predictor`, ...); import from the modules above for the rest.
"""
