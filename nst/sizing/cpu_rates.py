"""The rates of this CPU the timing model needs, measured with TensorFlow.

`measure()` returns the dict `devices.get("cpu", rates)` takes (the keys of
`devices.CPU_RECORDED`):
  matmul_gflops              a 2048 x 2048 float32 matmul
  depthwise_gflops           a 3x3 depthwise convolution, [32, 28, 28, 96] float32
  depthwise_backward_gflops  its input and filter gradients (2 x its FLOPs)
  bandwidth                  ((bytes one op reads + writes, GB/s), ...): products of
                             two distinct tensors of 32 Ki to 32 Mi elements, each
                             pair read once per call from a working set larger than
                             the last-level cache, less the per-op overhead
  op_overhead_us             one product of a one-element tensor in a chain of them
Everything runs inside tf.function, as a training step does, with all threads.
Each figure repeats its work for about `seconds` after one warm-up call.

Slow (about 15 s) and only meaningful on an otherwise idle machine.
"""

import time

DEPTHWISE_SHAPE = (32, 28, 28, 96)
BANDWIDTH_ELEMENTS = tuple(2 ** k for k in range(15, 26, 2))  # 32 Ki .. 32 Mi
OVERHEAD_CHAIN = 256
# The bandwidth's working set: in a training step every activation is written once and
# read again only after the rest of the layer's tensors have passed through the caches,
# so the products read tensors that are not in any cache. A chain that multiplies one
# tensor again and again keeps it in L2 and measured 5-10x the rate of the model's ops
# (docs/tpu.md, "Checked against this CPU and the paper").
COLD_BYTES = 256 * 2 ** 20
MIN_PRODUCTS, MAX_PRODUCTS = 8, 256


# The clock of every measurement; tests replace it to check the arithmetic untimed.
clock = time.perf_counter


def seconds_per_call(fn, seconds: float) -> float:
    """Mean seconds of `fn()` over about `seconds` (at least 3 calls, after a warm-up)."""
    fn()
    count, start = 0, clock()
    while count < 3 or clock() - start < seconds:
        fn()
        count += 1
    return (clock() - start) / count


def matmul_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """float32 GFLOP/s of an n x n matmul (2 n^3 FLOPs)."""
    import tensorflow as tf
    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    run = tf.function(lambda: tf.linalg.matmul(a, b))
    return 2 * n ** 3 / seconds_per_call(lambda: run().numpy(), seconds) / 1e9


def depthwise_gflops(shape=DEPTHWISE_SHAPE, kernel: int = 3, seconds: float = 2.0):
    """(forward, backward) GFLOP/s of a stride-1 'SAME' depthwise convolution.

    Forward FLOPs: 2 x output elements x kernel^2; the backward (input and
    filter gradients) counts twice that, timed as forward+backward less forward.
    """
    import tensorflow as tf
    x = tf.random.normal(shape)
    w = tf.random.normal([kernel, kernel, shape[-1], 1])
    dy = tf.random.normal(shape)

    def conv(x, w):
        return tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME")

    forward = tf.function(lambda: tf.reduce_sum(conv(x, w)))

    @tf.function
    def both():
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            y = conv(x, w)
        dx, dw = tape.gradient(y, [x, w], output_gradients=dy)
        return tf.reduce_sum(dx) + tf.reduce_sum(dw)

    flops = 2.0 * x.shape.num_elements() * kernel * kernel
    t_forward = seconds_per_call(lambda: forward().numpy(), seconds)
    t_both = seconds_per_call(lambda: both().numpy(), seconds)
    return flops / t_forward / 1e9, 2 * flops / max(t_both - t_forward, 1e-9) / 1e9


def _chain(n: int, length: int):
    """A tf.function running `length` dependent products x <- x * s on n floats."""
    import tensorflow as tf
    x = tf.random.uniform([n])
    s = tf.constant(1.0001)

    @tf.function
    def run(x, s):
        # s is an argument, not a constant: grappler cannot fold the chain.
        for _ in range(length):
            x = x * s
        return tf.reduce_sum(x[:1])

    return lambda: run(x, s).numpy()


def op_overhead_us(seconds: float = 1.0) -> float:
    """Microseconds per op of a chain of one-element products."""
    return seconds_per_call(_chain(1, OVERHEAD_CHAIN), seconds) / OVERHEAD_CHAIN * 1e6


def _cold_products(n: int, count: int):
    """A tf.function computing `count` products x_k * x_(k+1) of distinct n-float tensors."""
    import tensorflow as tf
    xs = [tf.random.uniform([n]) for _ in range(count + 1)]

    @tf.function
    def run():
        return [xs[k] * xs[k + 1] for k in range(count)]

    return run


def products_per_call(n: int, budget_bytes: int = COLD_BYTES) -> int:
    """Products per call so that their inputs and outputs exceed `budget_bytes`."""
    return min(MAX_PRODUCTS, max(MIN_PRODUCTS, -(-budget_bytes // (8 * n))))


def bandwidth(overhead_us: float, sizes=BANDWIDTH_ELEMENTS, seconds: float = 0.5,
              budget_bytes: int = COLD_BYTES):
    """((bytes per op, GB/s), ...): each product reads two and writes one n-float tensor."""
    points = []
    for n in sizes:
        count = products_per_call(n, budget_bytes)
        run = _cold_products(n, count)
        per_op = seconds_per_call(run, seconds) / count
        moved = 12.0 * n
        points.append((moved, moved / max(per_op - overhead_us * 1e-6, 0.5 * per_op) / 1e9))
    return tuple(points)


def measure(seconds: float = 2.0, matmul_n: int = 2048, depthwise_shape=DEPTHWISE_SHAPE,
            bandwidth_sizes=BANDWIDTH_ELEMENTS) -> dict:
    """All rates (see the module docstring), with when they were taken."""
    overhead = op_overhead_us(seconds / 2)
    forward, backward = depthwise_gflops(depthwise_shape, seconds=seconds)
    return dict(matmul_gflops=matmul_gflops(matmul_n, seconds=seconds),
                depthwise_gflops=forward, depthwise_backward_gflops=backward,
                bandwidth=bandwidth(overhead, bandwidth_sizes, seconds / 4),
                op_overhead_us=overhead,
                recorded=time.strftime("measured %Y-%m-%d %H:%M"))
