"""Train-step benchmarks: throughput, MFU and memory of mmjax and of the peers users would pick."""
