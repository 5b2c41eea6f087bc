// wattserve int8 GEMM for CUDA GPUs: the same arithmetic as the CPU kernels in ../src
// (reference.rs defines it), so a model gives the same numbers on either device:
//   1. ws_quantize_rows: each activation row quantized symmetrically to int8 in [-127, 127]
//      (scale = max|x| / 127, q = round_half_even(x * (1 / scale))), rows padded to `kp` bytes;
//   2. ws_gemm_i8: y[r][c] = (Σ_k q_a[r][k] · q_w[c][k]) · scale_a[r] · scale_w[c] + bias[c],
//      exact int32 accumulation with __dp4a (sm_61+), then the float steps in the CPU's order
//      with explicit round-to-nearest intrinsics (no FMA contraction).
// Weights are stored row-major N × kp (one row per output channel, zero-padded to kp, a multiple
// of 4), quantized on the host at load with the CPU's quantizer.
//
// Compiled to PTX by ../build.rs when the `cuda` feature is on. NOT yet run on a GPU (see the
// README's CUDA section).

#include <stdint.h>

#define QUANT_THREADS 256

extern "C" __global__ void ws_quantize_rows(const float* __restrict__ x,
                                            int8_t* __restrict__ q,
                                            float* __restrict__ scales,
                                            int m, int k, int kp) {
    const int row = blockIdx.x;
    if (row >= m) return;
    const float* xr = x + (size_t)row * k;
    __shared__ float red[QUANT_THREADS];
    float mx = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) mx = fmaxf(mx, fabsf(xr[i]));
    red[threadIdx.x] = mx;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
        __syncthreads();
    }
    const float scale = __fdiv_rn(red[0], 127.0f);
    if (threadIdx.x == 0) scales[row] = scale;
    const float inv = scale == 0.0f ? 0.0f : __fdiv_rn(1.0f, scale);
    int8_t* qr = q + (size_t)row * kp;
    for (int i = threadIdx.x; i < kp; i += blockDim.x) {
        int v = 0;
        if (i < k && scale != 0.0f) {
            const float t = fminf(fmaxf(__fmul_rn(xr[i], inv), -127.0f), 127.0f);
            v = __float2int_rn(t);  // round half to even, like the CPU's 1.5·2^23 trick
        }
        qr[i] = (int8_t)v;
    }
}

// Output tile TM × TN per block of 16 × 16 threads (4 × 4 outputs per thread); K in steps of
// TKW int32 words (4 int8 values each) staged in shared memory.
#define TM 64
#define TN 64
#define TKW 8

extern "C" __global__ void ws_gemm_i8(const int8_t* __restrict__ a,
                                      const float* __restrict__ a_scales,
                                      const int8_t* __restrict__ w,
                                      const float* __restrict__ w_scales,
                                      const float* __restrict__ bias,
                                      float* __restrict__ y,
                                      int m, int n, int kp, int has_bias) {
    __shared__ int as[TM][TKW + 1];
    __shared__ int ws[TN][TKW + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * 16 + tx;
    const int row0 = blockIdx.y * TM, col0 = blockIdx.x * TN;
    const int kw = kp / 4;
    const int* a32 = reinterpret_cast<const int*>(a);
    const int* w32 = reinterpret_cast<const int*>(w);
    int acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0;

    for (int k0 = 0; k0 < kw; k0 += TKW) {
        for (int i = tid; i < TM * TKW; i += 256) {
            const int r = i / TKW, c = i % TKW, gc = k0 + c;
            const int gr = row0 + r, gn = col0 + r;
            as[r][c] = (gr < m && gc < kw) ? a32[(size_t)gr * kw + gc] : 0;
            ws[r][c] = (gn < n && gc < kw) ? w32[(size_t)gn * kw + gc] : 0;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < TKW; ++c) {
            int av[4], wv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                av[i] = as[ty + 16 * i][c];
                wv[i] = ws[tx + 16 * i][c];
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(av[i], wv[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = row0 + ty + 16 * i;
        if (r >= m) continue;
        const float sa = a_scales[r];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int c = col0 + tx + 16 * j;
            if (c >= n) continue;
            const float b = has_bias ? bias[c] : 0.0f;
            y[(size_t)r * n + c] =
                __fadd_rn(__fmul_rn(__fmul_rn((float)acc[i][j], sa), w_scales[c]), b);
        }
    }
}
