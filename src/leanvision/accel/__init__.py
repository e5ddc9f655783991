"""Hardware acceleration: device setup (`devices`), torch.compile (`compile`), extra inference runtimes
(`runtimes`: torch-compile, openvino), ONNX export with an accuracy parity check (`export`), the runtime x precision
x batch-size benchmark with cost and energy (`bench`, `energy`), and the `export`/`bench` CLI commands (`commands`).

Nothing is imported here, so the CLI stays fast to start. Example:
`from leanvision.accel.devices import setup_device; device = setup_device("cuda", channels_last=True)`.
"""
