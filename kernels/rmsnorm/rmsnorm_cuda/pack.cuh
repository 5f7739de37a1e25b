// 16-byte packs of bf16/fp16/fp32 values and their float conversions.
//
// Conversions go through the intrinsics rather than operators: PyTorch's extension
// build defines __CUDA_NO_HALF_CONVERSIONS__ and friends, which remove the operators.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace autolab_kernels {

template <typename T>
struct Pack;

template <>
struct Pack<float> {
  static constexpr int N = 4;
  __device__ __forceinline__ static void unpack(const uint4& v, float (&f)[N]) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
  __device__ __forceinline__ static uint4 pack(const float (&f)[N]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
  __device__ __forceinline__ static float to_float(float v) { return v; }
  __device__ __forceinline__ static float from_float(float v) { return v; }
};

// bf16 -> float is exact: the bf16 bits are the high half of the float's.
__device__ __forceinline__ void bf16x2_to_float(uint32_t u, float& lo, float& hi) {
  lo = __uint_as_float(u << 16);
  hi = __uint_as_float(u & 0xffff0000u);
}

__device__ __forceinline__ uint32_t float_to_bf16x2(float lo, float hi) {
  __nv_bfloat162 p = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &p, sizeof(u));
  return u;
}

__device__ __forceinline__ void half2_to_float(uint32_t u, float& lo, float& hi) {
  __half2 h;
  memcpy(&h, &u, sizeof(u));
  const float2 f = __half22float2(h);
  lo = f.x;
  hi = f.y;
}

__device__ __forceinline__ uint32_t float_to_half2(float lo, float hi) {
  __half2 h = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &h, sizeof(u));
  return u;
}

template <>
struct Pack<__nv_bfloat16> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(const uint4& v, float (&f)[N]) {
    bf16x2_to_float(v.x, f[0], f[1]);
    bf16x2_to_float(v.y, f[2], f[3]);
    bf16x2_to_float(v.z, f[4], f[5]);
    bf16x2_to_float(v.w, f[6], f[7]);
  }
  __device__ __forceinline__ static uint4 pack(const float (&f)[N]) {
    return make_uint4(float_to_bf16x2(f[0], f[1]), float_to_bf16x2(f[2], f[3]),
                      float_to_bf16x2(f[4], f[5]), float_to_bf16x2(f[6], f[7]));
  }
  __device__ __forceinline__ static float to_float(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float v) {
    return __float2bfloat16_rn(v);
  }
};

template <>
struct Pack<__half> {
  static constexpr int N = 8;
  __device__ __forceinline__ static void unpack(const uint4& v, float (&f)[N]) {
    half2_to_float(v.x, f[0], f[1]);
    half2_to_float(v.y, f[2], f[3]);
    half2_to_float(v.z, f[4], f[5]);
    half2_to_float(v.w, f[6], f[7]);
  }
  __device__ __forceinline__ static uint4 pack(const float (&f)[N]) {
    return make_uint4(float_to_half2(f[0], f[1]), float_to_half2(f[2], f[3]),
                      float_to_half2(f[4], f[5]), float_to_half2(f[6], f[7]));
  }
  __device__ __forceinline__ static float to_float(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from_float(float v) { return __float2half_rn(v); }
};

// Loads and stores of one 16-byte pack. STREAM marks data touched once: loads skip
// L1 and are evicted first from L2 (ld.global.cs), stores are streaming (st.global.cs).
template <bool STREAM>
__device__ __forceinline__ uint4 load_pack(const uint4* p) {
  if constexpr (STREAM) {
    return __ldcs(p);
  } else {
    return *p;
  }
}

template <bool STREAM>
__device__ __forceinline__ void store_pack(uint4* p, const uint4& v) {
  if constexpr (STREAM) {
    __stcs(p, v);
  } else {
    *p = v;
  }
}

// dtype codes shared by every launcher: 0 float32, 1 float16, 2 bfloat16.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

__host__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

}  // namespace autolab_kernels
