// Cycles per 8 int4 codes of the batch-1 inner loop, for the ways of turning packed nibbles into floats that the
// kernels notebook compares. One thread, 96 rows of K = 4096 codes (192 KiB, in L2 cache), groups of 128.
// Cycles are counted at the 2 GHz base clock: cycles = seconds * 2e9.
//
//   g++ -O3 -mavx2 -mfma -o /tmp/int4_block bench/int4_block.cpp && /tmp/int4_block
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now() { timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

enum Variant { kShiftMask, kSwapWords, kSwapWordsTable };

// Adds 64 codes (32 bytes at packed) times x to acc. The float order differs between variants, which does not
// change the timing.
template <Variant V>
static inline void block(const uint8_t* packed, const float* x, __m256 acc[4]) {
  const __m256i mask78 = _mm256_set1_epi8(0x78), exponent = _mm256_set1_epi8(0x41);
  const __m256i bytes = _mm256_loadu_si256((const __m256i*)packed);
  __m256i lo;
  if (V == kSwapWordsTable) {  // u << 3 of the low nibbles from a 16-entry table instead of a shift
    const __m256i table = _mm256_setr_epi8(0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
                                           0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120);
    lo = _mm256_shuffle_epi8(table, _mm256_and_si256(bytes, _mm256_set1_epi8(15)));
  } else {
    lo = _mm256_and_si256(_mm256_slli_epi16(bytes, 3), mask78);
  }
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bytes, 1), mask78);
  const __m256i words[4] = {_mm256_unpacklo_epi8(lo, exponent), _mm256_unpackhi_epi8(lo, exponent),
                            _mm256_unpacklo_epi8(hi, exponent), _mm256_unpackhi_epi8(hi, exponent)};
  const __m256i swap = _mm256_setr_epi8(2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13,
                                        2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
  for (int h = 0; h < 4; ++h) {
    __m256i lower_main, upper_main;
    if (V == kShiftMask) {  // the lower word shifted up, the upper word masked
      lower_main = _mm256_slli_epi32(words[h], 16);
      upper_main = _mm256_and_si256(words[h], _mm256_set1_epi32((int)0xFFFF0000u));
    } else {  // the words swapped, the upper word left as it is
      lower_main = _mm256_shuffle_epi8(words[h], swap);
      upper_main = words[h];
    }
    acc[(2 * h) % 4] = _mm256_fmadd_ps(_mm256_castsi256_ps(lower_main), _mm256_loadu_ps(x + 16 * h), acc[(2 * h) % 4]);
    acc[(2 * h + 1) % 4] = _mm256_fmadd_ps(_mm256_castsi256_ps(upper_main), _mm256_loadu_ps(x + 16 * h + 8),
                                            acc[(2 * h + 1) % 4]);
  }
}

// TN weight rows at a time share each load of x, and each group of 128 codes is scaled once.
template <Variant V, int TN>
static double run(const uint8_t* codes, const float* x, const float* scale, int N, int K, int reps, float* out) {
  const int groups = K / 128;
  const double start = now();
  for (int r = 0; r < reps; ++r)
    for (int n = 0; n < N; n += TN) {
      __m256 total[TN];
      for (int j = 0; j < TN; ++j) total[j] = _mm256_setzero_ps();
      for (int g = 0; g < groups; ++g) {
        __m256 acc[TN][4];
        for (int j = 0; j < TN; ++j)
          for (int h = 0; h < 4; ++h) acc[j][h] = _mm256_setzero_ps();
        for (int b = 0; b < 2; ++b)
          for (int j = 0; j < TN; ++j) block<V>(codes + (size_t)(n + j) * K / 2 + 64 * g + 32 * b, x + 128 * g + 64 * b, acc[j]);
        for (int j = 0; j < TN; ++j) {
          const __m256 group_sum = _mm256_add_ps(_mm256_add_ps(acc[j][0], acc[j][1]), _mm256_add_ps(acc[j][2], acc[j][3]));
          total[j] = _mm256_fmadd_ps(group_sum, _mm256_broadcast_ss(scale + (size_t)(n + j) * groups + g), total[j]);
        }
      }
      for (int j = 0; j < TN; ++j) {
        float lanes[8];
        _mm256_storeu_ps(lanes, total[j]);
        for (float lane : lanes) out[n + j] += lane;
      }
    }
  return now() - start;
}

template <Variant V, int TN>
static void report(const char* name, const uint8_t* codes, const float* x, const float* scale, int N, int K, float* out) {
  const int reps = 400;
  double best = 1e9;
  for (int trial = 0; trial < 5; ++trial) {
    const double seconds = run<V, TN>(codes, x, scale, N, K, reps, out);
    if (seconds < best) best = seconds;
  }
  printf("%-52s %.2f cycles per 8 codes\n", name, best * 2e9 / ((double)N * K * reps / 8));
}

int main() {
  const int N = 96, K = 4096;
  uint8_t* codes = (uint8_t*)aligned_alloc(64, (size_t)N * K / 2);
  float* x = (float*)aligned_alloc(64, K * sizeof(float));
  float* scale = (float*)aligned_alloc(64, (size_t)N * (K / 128) * sizeof(float));
  static float out[N];
  srand(0);
  for (size_t i = 0; i < (size_t)N * K / 2; ++i) codes[i] = (uint8_t)rand();
  for (int i = 0; i < K; ++i) x[i] = rand() / (float)RAND_MAX - 0.5f;
  for (int i = 0; i < N * (K / 128); ++i) scale[i] = 0.01f;
  report<kShiftMask, 1>("bits, lower word shifted, upper masked", codes, x, scale, N, K, out);
  report<kSwapWords, 1>("bits, words swapped, upper unmasked (gemv_int4_row64)", codes, x, scale, N, K, out);
  report<kSwapWordsTable, 1>("the same with a table for the low nibbles", codes, x, scale, N, K, out);
  report<kSwapWords, 2>("words swapped, two rows per load of x", codes, x, scale, N, K, out);
  printf("checksum %g\n", out[0]);
  return 0;
}
