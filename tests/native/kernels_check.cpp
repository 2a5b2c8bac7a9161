// The CPU operator's micro-kernels (csrc/cca_cpu_kernels.h, no torch) against plain
// double-precision loops, for a build where torch is not at hand: tests/test_ops_aarch64.py
// cross-compiles this file for aarch64 and runs it under qemu, so the portable vector
// path (GCC vector types on NEON) is checked on the architecture it exists for.
// Prints one line per check; exits 1 if any error is above its tolerance.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cca_cpu_kernels.h"

namespace {

using ccnet_edu::cpu::Matrix;
std::mt19937 rng(0);
int failures = 0;

template <typename T>
std::vector<T> random_values(int64_t n) {
  std::normal_distribution<double> normal;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

void report(const char* what, int64_t r, int64_t c, int64_t d, double error, double tolerance) {
  const bool ok = error <= tolerance;
  failures += !ok;
  std::printf("%s %s rows=%lld cols=%lld depth=%lld error=%.2e\n", ok ? "ok  " : "FAIL", what,
              static_cast<long long>(r), static_cast<long long>(c), static_cast<long long>(d),
              error);
}

// out (+)= a b with a and/or b stored transposed, out rows- or columns-contiguous.
template <typename T>
void check_line_product(int64_t rows, int64_t cols, int64_t depth, bool a_t, bool b_t, bool out_t,
                        bool accumulate, double tolerance) {
  auto a = random_values<T>(rows * depth), b = random_values<T>(depth * cols);
  auto out = random_values<T>(rows * cols);
  const std::vector<T> before = out;
  const Matrix<const T> A = a_t ? Matrix<const T>{a.data(), rows, depth, 1, rows}
                                : Matrix<const T>{a.data(), rows, depth, depth, 1};
  const Matrix<const T> B = b_t ? Matrix<const T>{b.data(), depth, cols, 1, depth}
                                : Matrix<const T>{b.data(), depth, cols, cols, 1};
  const Matrix<T> O = out_t ? Matrix<T>{out.data(), rows, cols, 1, rows}
                            : Matrix<T>{out.data(), rows, cols, cols, 1};
  ccnet_edu::cpu::line_product(O, A, B, accumulate);
  double error = 0, scale = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double expected = accumulate ? double(out_t ? before[c * rows + r] : before[r * cols + c]) : 0;
      for (int64_t k = 0; k < depth; ++k) expected += double(A(r, k)) * double(B(k, c));
      error = std::max(error, std::abs(double(O(r, c)) - expected));
      scale = std::max(scale, std::abs(expected));
    }
  char what[96];
  std::snprintf(what, sizeof what, "line_product<%s>%s%s%s%s", sizeof(T) == 4 ? "float" : "double",
                a_t ? " a^T" : "", b_t ? " b^T" : "", out_t ? " out^T" : "",
                accumulate ? " +=" : "");
  report(what, rows, cols, depth, error / std::max(scale, 1e-300), tolerance);
}

template <typename T>
void check_softmax(int64_t n, double tolerance) {
  auto e = random_values<T>(n);
  const std::vector<T> energy = e;
  ccnet_edu::cpu::softmax(e.data(), n);
  double m = -INFINITY, sum = 0, error = 0;
  for (auto x : energy) m = std::max(m, double(x));
  for (auto x : energy) sum += std::exp(double(x) - m);
  for (int64_t l = 0; l < n; ++l)
    error = std::max(error, std::abs(double(e[l]) - std::exp(double(energy[l]) - m) / sum));
  report(sizeof(T) == 4 ? "softmax<float>" : "softmax<double>", 1, n, 0, error, tolerance);

  auto grad = random_values<T>(n);
  const std::vector<T> grad_attention = grad;
  ccnet_edu::cpu::softmax_backward(e.data(), grad.data(), n);
  double dot = 0;
  error = 0;
  for (int64_t l = 0; l < n; ++l) dot += double(e[l]) * double(grad_attention[l]);
  for (int64_t l = 0; l < n; ++l)
    error = std::max(error, std::abs(double(grad[l]) - double(e[l]) * (grad_attention[l] - dot)));
  report(sizeof(T) == 4 ? "softmax_backward<float>" : "softmax_backward<double>", 1, n, 0, error,
         tolerance);
}

template <typename T>
void check_copy(int64_t rows, int64_t cols) {
  auto src = random_values<T>(rows * cols);
  std::vector<T> dst(rows * cols);
  // A transpose: src rows-contiguous, dst columns-contiguous (the layout change of the op).
  ccnet_edu::cpu::copy(Matrix<T>{dst.data(), rows, cols, 1, rows},
                       Matrix<const T>{src.data(), rows, cols, cols, 1});
  double error = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      error = std::max(error, std::abs(double(dst[c * rows + r]) - double(src[r * cols + c])));
  report(sizeof(T) == 4 ? "copy<float> transpose" : "copy<double> transpose", rows, cols, 0, error,
         0.0);
}

template <typename T>
void check_all(double tolerance) {
  // Full and partial tiles of every width: rows around multiples of 6, columns around
  // multiples of 16 and 64, the operator's depths (C' = 64, C = 512, a line length); and
  // 256 rows, so that a stored transposed has its k steps a multiple of 1 KiB apart, over
  // more than eight column blocks of the 16-byte and AVX2 widths (line_product copies such
  // an a into dense rows first).
  const int64_t shapes[][3] = {{1, 1, 1},    {5, 7, 3},     {6, 16, 64},  {7, 17, 64},
                               {13, 33, 97}, {97, 97, 64},  {97, 512, 97}, {12, 65, 5},
                               {256, 144, 5}};
  for (const auto& s : shapes)
    for (int layout = 0; layout < 8; ++layout)
      check_line_product<T>(s[0], s[1], s[2], layout & 1, layout & 2, layout & 4, layout == 5,
                            tolerance);
  for (int64_t n : {1, 5, 16, 17, 31, 193, 383}) check_softmax<T>(n, tolerance);
  for (int64_t n : {1, 3, 8, 17, 40}) check_copy<T>(n, n + 5);
}

}  // namespace

int main() {
  std::printf("instructions: %s\n", ccnet_edu::simd::kInstructions);
  check_all<float>(1e-5);
  check_all<double>(1e-12);
  std::printf("%d failures\n", failures);
  return failures == 0 ? 0 : 1;
}
