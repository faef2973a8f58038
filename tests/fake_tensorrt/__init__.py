"""A small stand-in for the `tensorrt` LIBRARY (not for our code), for logic tests on machines
without TensorRT or a GPU.

It models the parts of NVIDIA's Python API that the exporter calls, per major version (10.x keeps
the weak-typing BuilderFlag.FP16 / INT8; 11.x removed them), and records every call in
`module.calls` so a test can assert how the builder was configured. Its engines are JSON records
of the network's I/O, which its Runtime deserializes into an engine that answers the runner's
questions about its tensors (names, modes, types, shapes); nothing is ever executed. Tests inject it with
`monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.9.0"))`.
"""

from __future__ import annotations

import enum
import json
import types

import numpy as np
import onnx


def make_tensorrt(version: str) -> types.ModuleType:
    major = int(version.split(".")[0])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []  # (api name, arguments) in call order

    def record(name, *args):
        trt.calls.append((name, args))

    flag_names = ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS"]
    if major < 11:  # removed in 11.x together with weak typing
        flag_names = ["FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS", *flag_names]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", flag_names, start=0)
    net_flags = ["STRONGLY_TYPED"] if major >= 11 else ["EXPLICIT_BATCH", "STRONGLY_TYPED"]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", net_flags, start=0)
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)
    trt.DataType = enum.IntEnum("DataType", ["FLOAT", "HALF", "INT8", "INT32"], start=0)
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", ["NONE", "INPUT", "OUTPUT"], start=0)
    np_types = {trt.DataType.FLOAT: np.float32, trt.DataType.HALF: np.float16,
                trt.DataType.INT8: np.int8, trt.DataType.INT32: np.int32}
    trt.nptype = lambda dt: np_types[dt]
    onnx_types = {onnx.TensorProto.FLOAT: trt.DataType.FLOAT, onnx.TensorProto.FLOAT16: trt.DataType.HALF}

    class Logger:
        WARNING = 2

        def __init__(self, severity=WARNING):
            self.severity = severity

    class Tensor:
        def __init__(self, value_info):
            t = value_info.type.tensor_type
            self.name = value_info.name
            self.dtype = onnx_types[t.elem_type]
            self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.num_errors = 0

        def parse_from_file(self, path):
            record("parse_from_file", path)
            graph = onnx.load(path, load_external_data=False).graph
            self.network.inputs = [Tensor(v) for v in graph.input]
            self.network.outputs = [Tensor(v) for v in graph.output]
            return True

        def get_error(self, i):
            raise IndexError(i)

    class Profile:
        def set_shape(self, name, min, opt, max):  # noqa: A002  (TensorRT's own keyword names)
            record("profile.set_shape", name, tuple(min), tuple(opt), tuple(max))

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"+"  # grows with every build, like a real cache

    class Config:
        def __init__(self):
            self.flags = {trt.BuilderFlag.TF32}  # TF32 is on by default in TensorRT
            self.cache = None

        def set_memory_pool_limit(self, pool, size):
            record("set_memory_pool_limit", pool, size)

        def set_flag(self, flag):
            record("set_flag", flag)
            self.flags.add(flag)

        def clear_flag(self, flag):
            record("clear_flag", flag)
            self.flags.discard(flag)

        def add_optimization_profile(self, profile):
            record("add_optimization_profile")

        def create_timing_cache(self, data):
            record("create_timing_cache", bytes(data))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            record("create_network", flags)
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            record("build_serialized_network")
            io = [(t.name, "INPUT", t.dtype.name, list(t.shape)) for t in network.inputs]
            io += [(t.name, "OUTPUT", t.dtype.name, list(t.shape)) for t in network.outputs]
            desc = {"flags": sorted(f.name for f in config.flags), "network_flags": network.flags, "io": io}
            return b"FAKE-ENGINE " + json.dumps(desc).encode()

    class Engine:
        def __init__(self, io):
            self.io = io  # [(name, mode, dtype, shape)]

        num_io_tensors = property(lambda self: len(self.io))

        def _tensor(self, name):
            return next(t for t in self.io if t[0] == name)

        def get_tensor_name(self, i):
            return self.io[i][0]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode[self._tensor(name)[1]]

        def get_tensor_dtype(self, name):
            return trt.DataType[self._tensor(name)[2]]

        def get_tensor_shape(self, name):
            return tuple(self._tensor(name)[3])

        def create_execution_context(self):
            record("create_execution_context")
            return object()  # execution needs a GPU: a runner test never gets that far

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            record("deserialize_cuda_engine")
            if not bytes(data).startswith(b"FAKE-ENGINE "):
                return None  # as TensorRT answers bytes it cannot read
            return Engine(json.loads(bytes(data)[len(b"FAKE-ENGINE "):])["io"])

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    return trt


def calls_named(trt: types.ModuleType, name: str) -> list[tuple]:
    return [args for n, args in trt.calls if n == name]
