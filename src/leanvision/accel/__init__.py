"""The `export` and `bench` commands: ONNX export with an accuracy parity check (`export`), the runtime x precision
x batch-size benchmark with cost and energy (`bench`, `energy`), and their CLI flags (`commands`).

Devices live in `leanvision.device`, torch.compile in `leanvision.compile`, the runtimes and ONNX export in
`leanvision.runtimes`, timing in `leanvision.measure`. Nothing is imported here, so the CLI stays fast to start.
"""
