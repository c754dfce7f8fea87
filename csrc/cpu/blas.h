// Matrix products for the CPU kernels' tiles.
//
// `matmul` (C = A B or C += A B, row-major, no transposes) is what the kernels call. For fp32 it
// is torch's batch-reduce GEMM (at::native::cpublas::brgemm): oneDNN's JIT micro-kernels, which
// use AVX-512 where the CPU has it. Measured on the 2-core AMD EPYC (Zen 4) build machine at the
// attention tile shapes (128x512x64, 128x64x512): 200-225 GFLOP/s against 175-195 for MKL's
// sgemm, which runs its AVX2 code path on AMD. Where oneDNN has no kernel for the CPU, brgemm
// itself falls back to torch's GEMM. fp64 (gradcheck) goes to `gemm` below.
//
// `gemm` (any transposes, alpha, beta) calls the BLAS that torch itself links (MKL in the x86
// wheels, OpenBLAS on arm64).
//
// Why not at::mm: a dispatcher call plus two tensor views costs a few microseconds, about 5% of
// a 64x256x64 tile product; calling the Fortran symbol costs nothing. Inside an at::parallel_for
// region the BLAS runs single-threaded (it sees the OpenMP region), which is what a per-thread
// tile product wants. The symbols are weak: a torch built without a Fortran-style BLAS (they
// are not part of torch's API) still loads this library and falls back to at::addmm_.
#pragma once

#include <ATen/ATen.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <climits>
#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace leedl_fast {
namespace blas_detail {

inline int narrow(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= INT_MAX, "leedl_fast: GEMM dimension ", v, " exceeds int32");
  return static_cast<int>(v);
}

// The fallback: views of the raw buffers and one at::addmm_ (slower per call, same result).
template <typename T>
void gemm_aten(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
               int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto view = [&](const T* p, int64_t rows, int64_t cols, int64_t ld, bool trans) {
    // op(X) is rows x cols; X itself is stored row-major with row stride ld.
    auto x = trans ? at::from_blob(const_cast<T*>(p), {cols, rows}, {ld, 1}, opts).t()
                   : at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, opts);
    return x;
  };
  at::Tensor cv = at::from_blob(c, {m, n}, {ldc, 1}, opts);
  cv.addmm_(view(a, m, k, lda, trans_a), view(b, k, n, ldb, trans_b), beta, alpha);
}

}  // namespace blas_detail

// C (m x n, row stride ldc) = alpha * op(A) op(B) + beta * C, every matrix row-major; op(A) is
// m x k and op(B) is k x n (trans_a: A is stored k x m). beta == 0 ignores C's contents.
//
// A row-major matrix is the column-major transpose, so this is the Fortran call for
// C^T = op(B)^T op(A)^T: operands swapped, m and n swapped, the transpose flags unchanged.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "fp32/fp64 GEMM only");
  if (m == 0 || n == 0) return;
  constexpr bool kFloat = std::is_same_v<T, float>;
  const bool have_blas = kFloat ? sgemm_ != nullptr : dgemm_ != nullptr;
  if (!have_blas) {
    blas_detail::gemm_aten(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int M = blas_detail::narrow(n), N = blas_detail::narrow(m), K = blas_detail::narrow(k);
  // Leading dimensions must be >= 1 even when a dimension is empty (k == 0: C = beta * C).
  const int LDA = blas_detail::narrow(std::max<int64_t>(ldb, 1));
  const int LDB = blas_detail::narrow(std::max<int64_t>(lda, 1));
  const int LDC = blas_detail::narrow(std::max<int64_t>(ldc, 1));
  if constexpr (kFloat)
    sgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
  else
    dgemm_(&ta, &tb, &M, &N, &K, &alpha, b, &LDA, a, &LDB, &beta, c, &LDC);
}

// C (m x n, row stride ldc) = A (m x k) B (k x n), or C += A B when accumulate; row-major.
inline void matmul(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                   int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  if (m == 0 || n == 0) return;
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  if (k > 0) {  // (a JIT kernel for an empty reduction is not worth asking for)
    at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, /*is_vnni=*/false);
    return;
  }
#endif
  gemm<float>(false, false, m, n, k, 1.0f, a, lda, b, ldb, accumulate ? 1.0f : 0.0f, c, ldc);
}

inline void matmul(int64_t m, int64_t n, int64_t k, const double* a, int64_t lda,
                   const double* b, int64_t ldb, double* c, int64_t ldc, bool accumulate) {
  gemm<double>(false, false, m, n, k, 1.0, a, lda, b, ldb, accumulate ? 1.0 : 0.0, c, ldc);
}

// Call at the end of a thread's work when `matmul` may have used brgemm (frees the per-thread
// hardware state oneDNN may hold, e.g. AMX tile configuration).
inline void matmul_release() {
#if defined(CPUBLAS_BRGEMM_F32F32F32)
  at::native::cpublas::brgemm_release(/*is_vnni=*/false);
#endif
}

}  // namespace leedl_fast
