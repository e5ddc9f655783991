"""ONNX graph rewrites: same numbers, faster kernels in ONNX Runtime.

`reorder_output_to_nhwc` (on ORT's optimized CPU graph, at session creation) and `spatial_means_to_global_pool` (on
an exported graph before int8 quantization). Both edit an `onnx.ModelProto` graph in place and return a count;
`onnx.helper` is imported inside them (a heavy optional library, kept off `import leanvision`'s path).
"""

from __future__ import annotations

from typing import Any


def reorder_output_to_nhwc(graph) -> int:
    """Rewrite `ReorderOutput -> QuantizeLinear (per tensor) -> Transpose(0, 2, 3, 1)` chains, whose intermediate
    tensors have no other consumer, as `ReorderOutput(channels_last=1) -> QuantizeLinear`; returns the count."""
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    count = 0
    for reorder in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in reorder.attribute}
        if reorder.op_type != "ReorderOutput" or attrs.get("channels_last", 0) or reorder.output[0] in outputs:
            continue
        (quant, *more) = consumers.get(reorder.output[0], [None, None])
        if more or quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] != reorder.output[0]:
            continue
        scale = initializers.get(quant.input[1])
        if scale is None or len(scale.dims) != 0 or quant.output[0] in outputs:  # per-tensor only
            continue
        (transpose, *more) = consumers.get(quant.output[0], [None, None])
        if more or transpose is None or transpose.op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if perm != [0, 2, 3, 1]:
            continue
        for attr in reorder.attribute:
            if attr.name == "channels_last":
                attr.i = 1
        if "channels_last" not in attrs:
            reorder.attribute.append(helper.make_attribute("channels_last", 1))
        quant.output[0] = transpose.output[0]
        graph.node.remove(transpose)
        stale = {reorder.output[0], transpose.input[0]}  # their recorded NCHW shapes no longer hold
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        count += 1
    return count


def spatial_means_to_global_pool(onnx_model) -> int:
    """Rewrite ReduceMean over axes (2, 3) of a 4-D tensor as GlobalAveragePool (+ Flatten when keepdims=0), in place.

    The same numbers in float, but ORT has an int8 NHWC kernel for GlobalAveragePool (QLinearGlobalAveragePool) and
    none for ReduceMean, which otherwise forces a dequantize plus an NHWC -> NCHW transpose of the last feature map.
    Returns how many nodes were rewritten.
    """
    from onnx import helper, numpy_helper

    graph, count = onnx_model.graph, 0
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        if node.op_type != "ReduceMean":
            continue
        axes = next((list(a.ints) for a in node.attribute if a.name == "axes"), None)
        if axes is None and len(node.input) > 1 and node.input[1] in initializers:  # opset >= 18: axes as an input
            axes = [int(a) for a in numpy_helper.to_array(initializers[node.input[1]])]
        keepdims = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
        if sorted(axes or []) not in ([2, 3], [-2, -1]):
            continue
        index = list(graph.node).index(node)
        graph.node.remove(node)
        pooled = node.output[0] + "_global_pool" if not keepdims else node.output[0]
        new = [helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name + "_global_pool")]
        if not keepdims:
            new.append(helper.make_node("Flatten", [pooled], [node.output[0]], name=node.name + "_flatten", axis=1))
        for offset, item in enumerate(new):
            graph.node.insert(index + offset, item)
        count += 1
    return count
