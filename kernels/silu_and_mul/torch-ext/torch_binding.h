#pragma once

#include <ATen/core/Tensor.h>

// out = silu(input[..., :d]) * input[..., d:], with input.size(-1) == 2 * d.
void silu_and_mul(at::Tensor& out, const at::Tensor& input);

// out = silu(gate) * up, three tensors of one shape.
void silu_mul(at::Tensor& out, const at::Tensor& gate, const at::Tensor& up);

// silu_mul with the launch shape chosen by the caller (benchmarks); 0 picks the default.
void silu_mul_tuned(at::Tensor& out, const at::Tensor& gate, const at::Tensor& up,
                    int64_t block, int64_t unroll, int64_t stream_hint);
