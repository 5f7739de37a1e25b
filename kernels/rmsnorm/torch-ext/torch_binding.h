#pragma once

#include <ATen/core/Tensor.h>

// out = input * rsqrt(mean(input^2, -1) + eps) * weight; one dtype for all three.
void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight, double eps);

// rms_norm with the launch shape chosen by the caller (benchmarks): tpr threads per
// row, vpt 16-byte packs per thread, block threads per block; 0 picks the default.
void rms_norm_tuned(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                    double eps, int64_t tpr, int64_t vpt, int64_t block, int64_t stream_hint);
