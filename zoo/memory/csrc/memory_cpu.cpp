// memzoo's CPU kernels for the product-key memory: the pair search, the selected sub-key scores'
// backward, the value read's backward, the fused read (search, weights, value rows) and its backward,
// rows-only Adam, the squared norm gradient clipping takes, and the check that a sparse row gradient's
// rows ascend. Each replaces a chain of small PyTorch ops (zoo/memory/*.py keeps that chain as the
// reference) with one pass over its data.
// Built on first use by torch.utils.cpp_extension (zoo/memory/ops/cpu.py); float32 and float64.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#ifdef __AVX2__
#include <immintrin.h>
#endif
#include <utility>

namespace {

constexpr int64_t kRowGrain = 16;  // rows per parallel task (each row is at least a few hundred ops)
constexpr int64_t kPrefetchRows = 8;  // how far ahead scattered table rows are fetched into the cache

// Ask for the cache lines of row[0..d) ahead of use (for writing, or only reading).
template <typename T>
inline void prefetch_row(const T* row, int64_t d, bool write = true) {
  for (int64_t c = 0; c < d; c += 64 / static_cast<int64_t>(sizeof(T))) {
    if (write) {
      __builtin_prefetch(row + c, 1);
    } else {
      __builtin_prefetch(row + c, 0);
    }
  }
}

void check_cpu_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              " must be float32 or float64, got ", t.scalar_type());
}

void check_long(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong, name, " must be a CPU int64 tensor, got ",
              t.scalar_type(), " on ", t.device());
}

// out[c] = w * x[c] (assign) or out[c] += w * x[c], c < d.
template <typename T>
inline void scaled_into(T* __restrict out, T w, const T* __restrict x, int64_t d, bool assign) {
  if (assign) {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) out[c] = w * x[c];
  } else {
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) out[c] += w * x[c];
  }
}

// sum_c a[c] * b[c], c < d (vector lanes summed at the end: not the order of a sequential loop).
template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t d) {
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < d; ++c) sum += a[c] * b[c];
  return sum;
}

// Calls f with the row width d: a compile-time constant for the common widths (each vector loop over
// a row is then unrolled into registers), else the runtime value.
template <typename F>
inline void with_width(int64_t d, F&& f) {
  switch (d) {
    case 16: return f(std::integral_constant<int64_t, 16>{});
    case 32: return f(std::integral_constant<int64_t, 32>{});
    case 64: return f(std::integral_constant<int64_t, 64>{});
    case 128: return f(std::integral_constant<int64_t, 128>{});
    case 256: return f(std::integral_constant<int64_t, 256>{});
    default: return f(d);
  }
}

// out[j] = rows[j] . x for four rows at once (four independent sums: a single one would wait on
// each vector add's latency).
template <typename T>
inline void dot4(const T* __restrict r0, const T* __restrict r1, const T* __restrict r2, const T* __restrict r3,
                 const T* __restrict x, int64_t d, T* out) {
  T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
  for (int64_t c = 0; c < d; ++c) {
    s0 += r0[c] * x[c];
    s1 += r1[c] * x[c];
    s2 += r2[c] * x[c];
    s3 += r3[c] * x[c];
  }
  out[0] = s0;
  out[1] = s1;
  out[2] = s2;
  out[3] = s3;
}

// One row of lazy Adam (see row_adam), with its own second moment per column (v: d values) or one
// per row (v: 1 value, updated with the row's mean g^2).
template <typename T>
inline void adam_row(T* __restrict p, T* __restrict m, T* __restrict v, const T* __restrict g, int64_t d, bool rowwise,
                     T w1, T b2, T w2, T bias2, T scale, T epsilon) {
  if (rowwise) {
    v[0] = v[0] * b2 + w2 * (dot(g, g, d) / static_cast<T>(d));
    const T denom = std::sqrt(v[0] / bias2) + epsilon;
#pragma omp simd
    for (int64_t c = 0; c < d; ++c) {
      const T mc = m[c] + w1 * (g[c] - m[c]);
      m[c] = mc;
      p[c] += mc * scale / denom;
    }
    return;
  }
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) {
    const T mc = m[c] + w1 * (g[c] - m[c]);
    const T vc = v[c] * b2 + w2 * (g[c] * g[c]);
    m[c] = mc;
    v[c] = vc;
    p[c] += mc * scale / (std::sqrt(vc / bias2) + epsilon);
  }
}

// A counter as wide as T, so that counting comparisons of T vectorises.
template <typename T>
using Count = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;

#ifdef __AVX2__
// kLanePacks.lanes[mask]: the lanes of mask's set bits, lowest first (then zeros): a permutation
// that moves those lanes of a vector to its front.
struct LanePacks {
  alignas(32) int32_t lanes[256][8] = {};
  LanePacks() {
    for (int mask = 0; mask < 256; ++mask) {
      for (int lane = 0, count = 0; lane < 8; ++lane) {
        if (mask & (1 << lane)) lanes[mask][count++] = lane;
      }
    }
  }
};
const LanePacks kLanePacks;

// -1 in the lanes where `*other predicate v` holds, else 0 (predicate: an _mm256_cmp_ps immediate).
template <int predicate>
inline __m256i lanes_where(const float* other, __m256 v) {
  return _mm256_castps_si256(_mm256_cmp_ps(_mm256_broadcast_ss(other), v, predicate));
}
#endif

// Positions i < n with x[i] >= floor, ascending, into kept (n slots) and their values into
// kept_vals (n slots); returns their count. With AVX2, eight at a time: the comparison's bit mask
// picks a permutation that packs the kept lanes to the front, stored whole, the count moved by
// their number (no branch: one per element would be mispredicted about as often as the scores
// cross the floor).
template <typename T>
int64_t compact_at_least(const T* x, int64_t n, T floor, int32_t* kept, T* kept_vals) {
  int64_t count = 0, i = 0;
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {
    const __m256 level = _mm256_set1_ps(floor);
    for (; i + 8 <= n; i += 8) {  // the stores reach kept[count + 7] <= kept[i + 7]: inside
      const __m256 v = _mm256_loadu_ps(x + i);
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, level, _CMP_GE_OQ));
      const __m256i lanes = _mm256_load_si256(reinterpret_cast<const __m256i*>(kLanePacks.lanes[mask]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(kept + count),
                          _mm256_add_epi32(lanes, _mm256_set1_epi32(static_cast<int32_t>(i))));
      _mm256_storeu_ps(kept_vals + count, _mm256_permutevar8x32_ps(v, lanes));
      count += __builtin_popcount(static_cast<unsigned>(mask));
    }
  }
#endif
  for (; i < n; ++i) {
    kept[count] = static_cast<int32_t>(i);
    kept_vals[count] = x[i];
    count += x[i] >= floor;
  }
  return count;
}

// Of x[0..n) the k largest among those >= floor (at least k are), descending, into vals / idx;
// equal values in index order. Those values are gathered (padded with -inf to whole vectors) and
// each one's rank is counted against all of them, vectorised (those above it, and those equal to it
// at an earlier position); it lands at that rank. kept: n slots; kept_vals: n + 8 values.
template <typename T>
void top_ranked(const T* x, int64_t n, int64_t k, T floor, int32_t* kept, T* kept_vals, T* vals, int64_t* idx) {
  const int64_t count = compact_at_least(x, n, floor, kept, kept_vals);
  const int64_t padded = (count + 7) / 8 * 8;
  for (int64_t s = count; s < padded; ++s) kept_vals[s] = -std::numeric_limits<T>::infinity();
#ifdef __AVX2__
  if constexpr (std::is_same_v<T, float>) {  // eight candidates ranked at once, against one broadcast value at a time
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int64_t c = 0; c < count; c += 8) {
      const __m256 v = _mm256_loadu_ps(kept_vals + c);
      const __m256i position = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(c)), lane);
      __m256i rank = _mm256_setzero_si256();  // minus the count of values ranked before each candidate
      for (int64_t t = 0; t < c; ++t) rank = _mm256_add_epi32(rank, lanes_where<_CMP_GE_OQ>(kept_vals + t, v));  // earlier: ties too
      for (int64_t t = c; t < c + 8; ++t) {  // the candidates themselves: a tie counts where t is earlier
        const __m256i earlier = _mm256_cmpgt_epi32(position, _mm256_set1_epi32(static_cast<int32_t>(t)));
        const __m256i tied = _mm256_and_si256(lanes_where<_CMP_EQ_OQ>(kept_vals + t, v), earlier);
        rank = _mm256_add_epi32(rank, _mm256_or_si256(lanes_where<_CMP_GT_OQ>(kept_vals + t, v), tied));
      }
      for (int64_t t = c + 8; t < count; ++t) rank = _mm256_add_epi32(rank, lanes_where<_CMP_GT_OQ>(kept_vals + t, v));  // later
      rank = _mm256_sub_epi32(_mm256_setzero_si256(), rank);
      alignas(32) int32_t ranks[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(ranks), rank);
      for (int64_t j = 0; j < 8 && c + j < count; ++j) {
        if (ranks[j] < k) {
          vals[ranks[j]] = kept_vals[c + j];
          idx[ranks[j]] = kept[c + j];
        }
      }
    }
    return;
  }
#endif
  for (Count<T> s = 0; s < count; ++s) {
    const T v = kept_vals[s];
    Count<T> rank = 0;
#pragma omp simd reduction(+ : rank)
    for (Count<T> t = 0; t < padded; ++t) {
      rank += (kept_vals[t] > v) | ((kept_vals[t] == v) & (t < s));  // ties: the earlier index ranks first
    }
    if (rank < k) {
      vals[rank] = v;
      idx[rank] = kept[s];
    }
  }
}

// How many of x[0..n) are >= floor (NaN never is).
template <typename T>
inline int64_t count_at_least(const T* __restrict x, int64_t n, T floor) {
  Count<T> count = 0;
#pragma omp simd reduction(+ : count)
  for (int64_t i = 0; i < n; ++i) count += x[i] >= floor;
  return count;
}

// A floor that at least k of x[0..n) reach (1 <= k <= n), raised from `low` (which k reach) towards
// `high` (the largest) by bisection on the value while more than `cap` reach it: each step is one vectorised count, where
// exact selection would branch on every comparison. The callers take cap = 9k/8: a step or two
// more than at 5k/4 costs less than ranking the extra survivors (each against every other): the
// search over 2 x 256 scores at k = 32 took 10% less time.
template <typename T>
T top_floor(const T* x, int64_t n, int64_t k, int64_t cap, T low, T high) {
  if (count_at_least(x, n, high) >= k) return high;  // ties at the top: all of them
  int64_t reached = count_at_least(x, n, low);
  for (int step = 0; step < 64 && reached > cap; ++step) {
    const T mid = low + (high - low) / 2;
    if (!(mid > low && mid < high)) break;  // no float between: ties hold the count up
    const int64_t count = count_at_least(x, n, mid);
    if (count >= k) {
      low = mid;
      reached = count;
    } else {
      high = mid;
    }
  }
  return low;
}

// The k largest of x[0..n) (1 <= k <= n), descending, into vals / idx; equal values in index order.
// kept: n slots; kept_vals: n + 8 values. A NaN score is an error (it has no rank).
template <typename T>
void top_sorted(const T* x, int64_t n, int64_t k, int32_t* kept, T* kept_vals, T* vals, int64_t* idx) {
  T low = x[0], high = x[0];
  Count<T> nans = 0;
#pragma omp simd reduction(min : low) reduction(max : high) reduction(+ : nans)
  for (int64_t i = 0; i < n; ++i) {
    low = x[i] < low ? x[i] : low;
    high = x[i] > high ? x[i] : high;
    nans += x[i] != x[i];
  }
  TORCH_CHECK(nans == 0, "a memory sub-key score is NaN (the query or the sub-keys are not finite)");
  const T floor = k >= n ? low : top_floor(x, n, k, k + k / 8, low, high);  // k = n: every score
  top_ranked(x, n, k, floor, kept, kept_vals, vals, idx);
}

// Rows r: the knn best pairs (i, j) by s1[r, i] + s2[r, j]: each half's best k1 / k2 sub-keys, then
// among the pairs of their sorted positions (a, b) with (a + 1) * (b + 1) <= knn (a-major order) the
// knn best sums (equal sums keep that order). Every other pair has knn pairs at least as good.
// s1 (R, n1), s2 (R, n2), last dim contiguous -> (idx (R, 2, knn) int64, halves (R, 2, knn));
// first-half indices are shifted by first_offset.
std::tuple<at::Tensor, at::Tensor> pair_topk(const at::Tensor& s1, const at::Tensor& s2, int64_t knn,
                                             int64_t first_offset) {
  check_cpu_float(s1, "scores1");
  check_cpu_float(s2, "scores2");
  TORCH_CHECK(s1.dim() == 2 && s2.dim() == 2 && s1.size(0) == s2.size(0), "scores1 (R, n1) and scores2 (R, n2) need ",
              "the same rows, got ", s1.sizes(), " and ", s2.sizes());
  TORCH_CHECK(s1.scalar_type() == s2.scalar_type(), "scores1 and scores2 differ in dtype");
  TORCH_CHECK(s1.stride(1) == 1 && s2.stride(1) == 1, "scores need a contiguous last dim");
  const int64_t rows = s1.size(0), n1 = s1.size(1), n2 = s2.size(1);
  const int64_t k1 = std::min(knn, n1), k2 = std::min(knn, n2);
  TORCH_CHECK(knn >= 1 && knn <= k1 * k2, "knn=", knn, " needs 1 <= knn <= ", k1 * k2, " candidate pairs");
  auto idx = at::empty({rows, 2, knn}, s1.options().dtype(at::kLong));
  auto halves = at::empty({rows, 2, knn}, s1.options());
  AT_DISPATCH_FLOATING_TYPES(s1.scalar_type(), "pair_topk", [&] {
    const scalar_t* p1 = s1.data_ptr<scalar_t>();
    const scalar_t* p2 = s2.data_ptr<scalar_t>();
    const int64_t st1 = s1.stride(0), st2 = s2.stride(0);
    int64_t* out_idx = idx.data_ptr<int64_t>();
    scalar_t* out_halves = halves.data_ptr<scalar_t>();
    std::vector<int64_t> first, second;  // the candidate pairs' sorted positions (a, b), a-major
    for (int64_t a = 0; a < k1; ++a) {
      for (int64_t b = 0; b < k2 && (a + 1) * (b + 1) <= knn; ++b) {
        first.push_back(a);
        second.push_back(b);
      }
    }
    // A floor knn pairs reach: the pair (a, b) is matched or beaten by the (a + 1)(b + 1) pairs at
    // or before it in both lists, so any sum with (a + 1)(b + 1) >= knn will do; the best of those
    // with the least such b for each a.
    std::vector<int64_t> edge_first, edge_second;
    for (int64_t a = 0; a < k1; ++a) {
      const int64_t b = (knn + a) / (a + 1) - 1;
      if (b < k2) {
        edge_first.push_back(a);
        edge_second.push_back(b);
      }
    }
    const int64_t n_pairs = static_cast<int64_t>(first.size()), n_edge = static_cast<int64_t>(edge_first.size());
    at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
      const int64_t most = std::max({n1, n2, n_pairs});
      std::vector<scalar_t> v1(k1), v2(k2), sums(n_pairs), best(knn), kept_vals(most + 8);
      std::vector<int64_t> i1(k1), i2(k2), pick(knn);
      std::vector<int32_t> kept(most);
      for (int64_t r = begin; r < end; ++r) {
        top_sorted(p1 + r * st1, n1, k1, kept.data(), kept_vals.data(), v1.data(), i1.data());
        top_sorted(p2 + r * st2, n2, k2, kept.data(), kept_vals.data(), v2.data(), i2.data());
        for (int64_t c = 0; c < n_pairs; ++c) sums[c] = v1[first[c]] + v2[second[c]];
        scalar_t floor = -std::numeric_limits<scalar_t>::infinity();
        for (int64_t e = 0; e < n_edge; ++e) floor = std::max(floor, v1[edge_first[e]] + v2[edge_second[e]]);
        floor = top_floor(sums.data(), n_pairs, knn, knn + knn / 8, floor, sums[0]);  // sums[0]: the pair (0, 0), the best
        top_ranked(sums.data(), n_pairs, knn, floor, kept.data(), kept_vals.data(), best.data(), pick.data());
        int64_t* oi = out_idx + r * 2 * knn;
        scalar_t* oh = out_halves + r * 2 * knn;
        for (int64_t c = 0; c < knn; ++c) {
          const int64_t a = first[pick[c]], b = second[pick[c]];
          oi[c] = i1[a] + first_offset;
          oi[knn + c] = i2[b];
          oh[c] = v1[a];
          oh[knn + c] = v2[b];
        }
      }
    });
  });
  return {idx, halves};
}

// Backward of scores[r, j] = q[r] . keys[(r % blocks) * n + idx[r, j]], the keys in blocks of n rows
// (one per head and half, blocks = K / n, the rows of q cycling through them): q (R, d), keys (K, d),
// idx (R, k) in [0, n), grad (R, k) -> (grad_q (R, d), grad_keys (K, d)). Each key row sums its reads
// in row order (each thread owns a range of key rows and scans every read), so the result does not
// depend on the thread count.
std::tuple<at::Tensor, at::Tensor> selected_scores_backward(const at::Tensor& q_in, const at::Tensor& keys_in,
                                                            const at::Tensor& idx_in, const at::Tensor& grad_in,
                                                            int64_t n) {
  check_cpu_float(q_in, "q");
  check_cpu_float(keys_in, "keys");
  check_cpu_float(grad_in, "grad");
  check_long(idx_in, "idx");
  TORCH_CHECK(q_in.scalar_type() == keys_in.scalar_type() && q_in.scalar_type() == grad_in.scalar_type(),
              "q, keys and grad must share a dtype");
  TORCH_CHECK(q_in.dim() == 2 && keys_in.dim() == 2 && q_in.size(1) == keys_in.size(1), "q (R, d) and keys (K, d), got ",
              q_in.sizes(), " and ", keys_in.sizes());
  TORCH_CHECK(n >= 1 && keys_in.size(0) % n == 0, "keys' ", keys_in.size(0), " rows are not blocks of n=", n);
  TORCH_CHECK(idx_in.sizes() == grad_in.sizes() && idx_in.dim() == 2 && idx_in.size(0) == q_in.size(0),
              "idx and grad must be (R, k) with R = q's rows, got ", idx_in.sizes(), " and ", grad_in.sizes());
  auto q = q_in.contiguous(), keys = keys_in.contiguous(), idx = idx_in.contiguous(), grad = grad_in.contiguous();
  const int64_t rows = q.size(0), d = q.size(1), n_keys = keys.size(0), k = idx.size(1), blocks = n_keys / n;
  auto grad_q = at::empty_like(q);
  auto grad_keys = at::zeros_like(keys);
  const int64_t* pi = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows * k; ++i) {
    TORCH_CHECK(pi[i] >= 0 && pi[i] < n, "sub-key index ", pi[i], " outside [0, ", n, ")");
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "selected_scores_backward", [&] {
    const scalar_t* pq = q.data_ptr<scalar_t>();
    const scalar_t* pk = keys.data_ptr<scalar_t>();
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    scalar_t* gq = grad_q.data_ptr<scalar_t>();
    scalar_t* gk = grad_keys.data_ptr<scalar_t>();
    with_width(d, [&](auto width) {
      const int64_t w = width;
      at::parallel_for(0, rows, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const scalar_t* block = pk + (r % blocks) * n * w;
          for (int64_t j = 0; j < k; ++j) scaled_into(gq + r * w, pg[r * k + j], block + pi[r * k + j] * w, w, j == 0);
        }
      });
      at::parallel_for(0, n_keys, 64, [&](int64_t lo, int64_t hi) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t base = (r % blocks) * n;
          if (base + n <= lo || base >= hi) continue;  // none of this row's keys is this thread's
          for (int64_t j = 0; j < k; ++j) {
            const int64_t key = base + pi[r * k + j];
            if (key >= lo && key < hi) scaled_into(gk + key * w, pg[r * k + j], pq + r * w, w, false);
          }
        }
      });
    });
  });
  return {grad_q, grad_keys};
}

constexpr int kRadixBits = 11;  // slot bits sorted per pass: 2^11 counts (16 KiB) stay in L1

// The reads of the non-negative slots (flat positions i < m < 2^31 into slots, each slot < n_slots,
// else an error naming it) grouped by slot ascending, each slot's reads in increasing position: a
// stable LSD radix sort of (slot << 32 | position) on the slot's bits, kRadixBits a pass (one pass
// up to 2^11 slots, two up to 2^22), every pass's counts taken in one read. Returns the sorted
// (slot << 32 | position) keys and fills unique / offsets (offsets.size() == unique.size() + 1).
std::vector<uint64_t> reads_by_slot(const int64_t* slots, int64_t m, int64_t n_slots, std::vector<int64_t>& unique,
                                    std::vector<int64_t>& offsets) {
  std::vector<uint64_t> keyed(m);
  int64_t n = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t slot = slots[i];
    TORCH_CHECK(slot < n_slots, "slot ", slot, " outside the table's ", n_slots, " rows");
    keyed[n] = (static_cast<uint64_t>(slot) << 32) | static_cast<uint64_t>(i);
    n += slot >= 0;  // a negative slot's entry is overwritten by the next read
  }
  keyed.resize(n);
  int bits = 1;
  while (bits < 31 && (int64_t(1) << bits) < n_slots) ++bits;
  const int passes = (bits + kRadixBits - 1) / kRadixBits;
  constexpr int64_t buckets = int64_t(1) << kRadixBits;
  std::vector<int64_t> counts(passes * buckets, 0);
  for (const uint64_t key : keyed) {
    for (int p = 0; p < passes; ++p) ++counts[p * buckets + ((key >> (32 + kRadixBits * p)) & (buckets - 1))];
  }
  std::vector<uint64_t> scratch(n);
  for (int p = 0; p < passes; ++p) {
    int64_t* count = counts.data() + p * buckets;
    if (std::count(count, count + buckets, n) == 1) continue;  // one digit for every read: already in order
    int64_t total = 0;
    for (int64_t b = 0; b < buckets; ++b) total += std::exchange(count[b], total);
    for (const uint64_t key : keyed) scratch[count[(key >> (32 + kRadixBits * p)) & (buckets - 1)]++] = key;
    keyed.swap(scratch);
  }
  unique.clear();
  offsets.clear();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t slot = static_cast<int64_t>(keyed[i] >> 32);
    if (i == 0 || slot != unique.back()) {
      unique.push_back(slot);
      offsets.push_back(i);
    }
  }
  offsets.push_back(n);
  return keyed;
}

// Backward of out[b] = sum_r weights[b, r] * table[slots[b, r]] (negative slots read nothing):
// table (N, d), slots / weights (B, R), grad_out (B, d) -> (grad_weights (B, R): table row . grad_out[b],
// 0 for a negative slot; unique slots (U,) ascending; rows (U, d): each slot's sum over its reads, in
// read order, of weight * grad_out[b]). rows_out, when defined, is an (at least U, d) buffer the rows
// are written into (rows is then its first U rows).
std::tuple<at::Tensor, at::Tensor, at::Tensor> bag_backward(const at::Tensor& table, const at::Tensor& slots_in,
                                                            const at::Tensor& weights_in, const at::Tensor& grad_in,
                                                            const c10::optional<at::Tensor>& rows_out) {
  check_cpu_float(table, "table");
  check_long(slots_in, "slots");
  TORCH_CHECK(table.dim() == 2 && table.stride(1) == 1, "table must be (N, d) with contiguous rows");
  TORCH_CHECK(weights_in.scalar_type() == table.scalar_type() && grad_in.scalar_type() == table.scalar_type(),
              "weights and grad_out must have the table's dtype ", table.scalar_type());
  TORCH_CHECK(slots_in.dim() == 2 && weights_in.sizes() == slots_in.sizes(), "slots and weights must be (B, R), got ",
              slots_in.sizes(), " and ", weights_in.sizes());
  TORCH_CHECK(grad_in.dim() == 2 && grad_in.size(0) == slots_in.size(0) && grad_in.size(1) == table.size(1),
              "grad_out must be (B, d) = (", slots_in.size(0), ", ", table.size(1), "), got ", grad_in.sizes());
  auto slots = slots_in.contiguous(), weights = weights_in.contiguous(), grad = grad_in.contiguous();
  const int64_t bags = slots.size(0), per_bag = slots.size(1), d = table.size(1), n_slots = table.size(0);
  const int64_t* ps = slots.data_ptr<int64_t>();
  TORCH_CHECK(bags * per_bag < (int64_t(1) << 31) && n_slots < (int64_t(1) << 31), "at most 2^31 reads and slots");
  std::vector<int64_t> unique_v, offsets;
  const std::vector<uint64_t> order = reads_by_slot(ps, bags * per_bag, n_slots, unique_v, offsets);
  const int64_t n_unique = static_cast<int64_t>(unique_v.size());
  auto grad_weights = at::empty_like(weights);
  auto unique = at::empty({n_unique}, slots.options());
  std::copy(unique_v.begin(), unique_v.end(), unique.data_ptr<int64_t>());
  at::Tensor rows;
  if (rows_out.has_value() && rows_out->defined()) {
    TORCH_CHECK(rows_out->is_contiguous() && rows_out->scalar_type() == table.scalar_type() && rows_out->dim() == 2 &&
                    rows_out->size(0) >= n_unique && rows_out->size(1) == d,
                "rows_out must be a contiguous (>= ", n_unique, ", ", d, ") ", table.scalar_type(), " buffer");
    rows = rows_out->narrow(0, 0, n_unique);
  } else {
    rows = at::empty({n_unique, d}, table.options());
  }
  const uint32_t reads_per_bag = static_cast<uint32_t>(per_bag);  // 32-bit division: a third of 64-bit's cost
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "bag_backward", [&] {
    const scalar_t* pt = table.data_ptr<scalar_t>();
    const int64_t stride = table.stride(0);
    const scalar_t* pw = weights.data_ptr<scalar_t>();
    const scalar_t* pg = grad.data_ptr<scalar_t>();
    scalar_t* gw = grad_weights.data_ptr<scalar_t>();
    scalar_t* pr = rows.data_ptr<scalar_t>();
    with_width(d, [&](auto width) {
      const int64_t w = width;
      // the weights' gradient: bag b's rows . grad_out[b], four rows at a time, rows fetched ahead
      at::parallel_for(0, bags, kRowGrain, [&](int64_t begin, int64_t end) {
        const int64_t last = end * per_bag;
        const scalar_t* row[4];
        for (int64_t b = begin; b < end; ++b) {
          for (int64_t r = 0; r < per_bag; r += 4) {
            const int64_t i = b * per_bag + r, count = std::min<int64_t>(4, per_bag - r);
            for (int64_t j = 0; j < 4; ++j) {
              const int64_t ahead = i + j + 2 * kPrefetchRows;  // rows go four at a time: fetch further ahead
              if (j < count && ahead < last && ps[ahead] >= 0) prefetch_row(pt + ps[ahead] * stride, w, false);
              row[j] = pt + (j < count ? std::max<int64_t>(ps[i + j], 0) : 0) * stride;  // a negative slot reads row 0
            }
            scalar_t out[4];
            dot4(row[0], row[1], row[2], row[3], pg + b * w, w, out);
            for (int64_t j = 0; j < count; ++j) gw[i + j] = ps[i + j] >= 0 ? out[j] : scalar_t(0);
          }
        }
      });
      // each slot's rows: its reads' weight * grad_out[bag], summed in read order
      at::parallel_for(0, n_unique, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          for (int64_t i = offsets[u]; i < offsets[u + 1]; ++i) {
            const uint32_t read = static_cast<uint32_t>(order[i]);
            scaled_into(pr + u * w, pw[read], pg + static_cast<int64_t>(read / reads_per_bag) * w, w, i == offsets[u]);
          }
        }
      });
    });
  });
  return {grad_weights, unique, rows};
}

// The query normalisations: "layernorm" (x - mean) / sqrt(var + eps) with the biased variance, or
// "rmsnorm" x / sqrt(mean(x^2) + eps), over each row of x (R, d), without affine parameters (what
// F.layer_norm / F.rms_norm compute) -> (y (R, d), 1 / sqrt(...) (R,)).
bool layer_norm_kind(c10::string_view kind) {
  TORCH_CHECK(kind == "layernorm" || kind == "rmsnorm", "norm must be 'layernorm' or 'rmsnorm', got '", kind, "'");
  return kind == "layernorm";
}

// One row of normalise_rows: y = (x - mean) * rstd (mean 0 without centre), returns rstd.
template <typename T>
inline T normalise_row(const T* __restrict x, T* __restrict y, int64_t d, bool centre, T eps) {
  T mean = 0;
  if (centre) {
#pragma omp simd reduction(+ : mean)
    for (int64_t c = 0; c < d; ++c) mean += x[c];
    mean /= static_cast<T>(d);
  }
  T square = 0;
#pragma omp simd reduction(+ : square)
  for (int64_t c = 0; c < d; ++c) square += (x[c] - mean) * (x[c] - mean);
  const T rstd = T(1) / std::sqrt(square / static_cast<T>(d) + eps);
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) y[c] = (x[c] - mean) * rstd;
  return rstd;
}

// One row of normalise_rows_backward: grad_x = rstd * (g - mean(g) - y * mean(g * y)) (no mean(g)
// without centre).
template <typename T>
inline void normalise_row_backward(const T* __restrict g, const T* __restrict y, T rstd, T* __restrict grad_x, int64_t d,
                                   bool centre) {
  T mean_g = 0, mean_gy = 0;
#pragma omp simd reduction(+ : mean_g, mean_gy)
  for (int64_t c = 0; c < d; ++c) {
    mean_g += g[c];
    mean_gy += g[c] * y[c];
  }
  mean_g = centre ? mean_g / static_cast<T>(d) : T(0);
  mean_gy /= static_cast<T>(d);
#pragma omp simd
  for (int64_t c = 0; c < d; ++c) grad_x[c] = rstd * (g[c] - mean_g - y[c] * mean_gy);
}

std::tuple<at::Tensor, at::Tensor> normalise_rows(const at::Tensor& x_in, c10::string_view kind, double eps) {
  check_cpu_float(x_in, "x");
  TORCH_CHECK(x_in.dim() == 2, "x must be (R, d), got ", x_in.sizes());
  TORCH_CHECK(eps > 0, "eps must be > 0, got ", eps);
  const bool centre = layer_norm_kind(kind);
  auto x = x_in.contiguous();
  const int64_t rows = x.size(0), d = x.size(1);
  auto y = at::empty_like(x);
  auto rstd = at::empty({rows}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "normalise_rows", [&] {
    using T = scalar_t;
    const T* px = x.data_ptr<T>();
    T* py = y.data_ptr<T>();
    T* pr = rstd.data_ptr<T>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        pr[r] = normalise_row(px + r * d, py + r * d, d, centre, static_cast<T>(eps));
      }
    });
  });
  return {y, rstd};
}

// Backward of normalise_rows: grad_y, y (R, d) and rstd (R,) as it gave them -> grad_x (R, d):
// rstd * (g - mean(g) - y * mean(g * y)) for "layernorm", rstd * (g - y * mean(g * y)) for "rmsnorm".
at::Tensor normalise_rows_backward(const at::Tensor& grad_in, const at::Tensor& y_in, const at::Tensor& rstd_in,
                                   c10::string_view kind) {
  check_cpu_float(grad_in, "grad_y");
  const bool centre = layer_norm_kind(kind);
  TORCH_CHECK(grad_in.dim() == 2 && y_in.sizes() == grad_in.sizes() && rstd_in.dim() == 1 && rstd_in.size(0) == y_in.size(0),
              "grad_y and y (R, d) and rstd (R,) expected, got ", grad_in.sizes(), ", ", y_in.sizes(), " and ", rstd_in.sizes());
  TORCH_CHECK(y_in.scalar_type() == grad_in.scalar_type() && rstd_in.scalar_type() == grad_in.scalar_type(),
              "grad_y, y and rstd must share a dtype");
  auto grad = grad_in.contiguous(), y = y_in.contiguous(), rstd = rstd_in.contiguous();
  const int64_t rows = y.size(0), d = y.size(1);
  auto grad_x = at::empty_like(y);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "normalise_rows_backward", [&] {
    using T = scalar_t;
    const T* pg = grad.data_ptr<T>();
    const T* py = y.data_ptr<T>();
    const T* pr = rstd.data_ptr<T>();
    T* px = grad_x.data_ptr<T>();
    at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        normalise_row_backward(pg + r * d, py + r * d, pr[r], px + r * d, d, centre);
      }
    });
  });
  return grad_x;
}

// Scores of both halves, scores (T, H, 2, n), -> the memory read of each token: each head's knn best
// slots (pair_topk), softmax weights over their (half1 + half2) / temperature, and the sum over heads
// and slots, in that order, of weight * table row. table (N, v), N = n * n ->
// (out (T, v), slots (T, H, knn) = i * n + j, weights (T, H, knn), idx (T, H, 2, knn): the sub-key
// indices i and j). What the PyTorch path computes with a top-k, a softmax and an embedding bag.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> product_read(const at::Tensor& scores, const at::Tensor& table,
                                                                        int64_t knn, double temperature) {
  check_cpu_float(scores, "scores");
  check_cpu_float(table, "table");
  TORCH_CHECK(scores.dim() == 4 && scores.size(2) == 2, "scores must be (T, H, 2, n), got ", scores.sizes());
  TORCH_CHECK(table.scalar_type() == scores.scalar_type(), "table and scores must share a dtype");
  const int64_t tokens = scores.size(0), heads = scores.size(1), n = scores.size(3), d = table.size(1);
  TORCH_CHECK(table.dim() == 2 && table.stride(1) == 1 && table.size(0) == n * n,
              "table must be (n^2, v) = (", n * n, ", v) with contiguous rows, got ", table.sizes());
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be > 0 and finite, got ", temperature);
  auto half = [&](int64_t s) {
    auto h = scores.select(2, s).reshape({tokens * heads, n});
    return h.stride(1) == 1 ? h : h.contiguous();
  };
  auto [idx, halves] = pair_topk(half(0), half(1), knn, 0);  // (T * H, 2, knn) each
  auto out = at::empty({tokens, d}, table.options());
  auto slots = at::empty({tokens, heads, knn}, idx.options());
  auto weights = at::empty({tokens, heads, knn}, table.options());
  const int64_t reads = heads * knn;
  AT_DISPATCH_FLOATING_TYPES(table.scalar_type(), "product_read", [&] {
    using T = scalar_t;
    const T* pt = table.data_ptr<T>();
    const int64_t stride = table.stride(0);
    const int64_t* pi = idx.data_ptr<int64_t>();
    const T* ph = halves.data_ptr<T>();
    int64_t* ps = slots.data_ptr<int64_t>();
    T* pw = weights.data_ptr<T>();
    T* po = out.data_ptr<T>();
    const T temp = static_cast<T>(temperature);
    with_width(d, [&](auto width) {
      const int64_t w = width;
      at::parallel_for(0, tokens, kRowGrain, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
          for (int64_t h = 0; h < heads; ++h) {  // slots and softmax weights of (t, h)
            const int64_t r = t * heads + h;
            const int64_t* i1 = pi + r * 2 * knn;
            const T* h1 = ph + r * 2 * knn;
            int64_t* slot = ps + r * knn;
            T* weight = pw + r * knn;
            T top = -std::numeric_limits<T>::infinity();
            for (int64_t j = 0; j < knn; ++j) {
              slot[j] = i1[j] * n + i1[knn + j];
              prefetch_row(pt + slot[j] * stride, w, false);
              weight[j] = (h1[j] + h1[knn + j]) / temp;
              top = std::max(top, weight[j]);
            }
            T total = 0;
            for (int64_t j = 0; j < knn; ++j) total += (weight[j] = std::exp(weight[j] - top));
            for (int64_t j = 0; j < knn; ++j) weight[j] /= total;
          }
          const int64_t* slot = ps + t * reads;
          const T* weight = pw + t * reads;
          for (int64_t j = 0; j < reads; ++j) scaled_into(po + t * w, weight[j], pt + slot[j] * stride, w, j == 0);
        }
      });
    });
  });
  return {out, slots, weights, idx.view({tokens, heads, 2, knn})};
}

// Backward of product_read: q (T, H, 2, d) and keys (H, 2, n, d) the scores' factors
// (scores[t, h, s, c] = q[t, h, s] . keys[h, s, c]), table, idx, slots and weights as product_read
// gave them, grad_out (T, v) -> (grad_q, grad_keys, and the table's gradient rows as bag_backward
// gives them: unique slots (U,), rows (U, v), in rows_out's memory when given). Only the selected
// sub-keys' scores carry a gradient (the search itself has none).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> product_read_backward(
    const at::Tensor& q, const at::Tensor& keys, const at::Tensor& table, const at::Tensor& idx, const at::Tensor& slots,
    const at::Tensor& weights_in, const at::Tensor& grad_out, double temperature, const c10::optional<at::Tensor>& rows_out) {
  TORCH_CHECK(q.dim() == 4 && keys.dim() == 4 && q.size(2) == 2 && keys.size(1) == 2 && q.size(1) == keys.size(0),
              "q (T, H, 2, d) and keys (H, 2, n, d) expected, got ", q.sizes(), " and ", keys.sizes());
  TORCH_CHECK(idx.dim() == 4 && slots.dim() == 3 && weights_in.sizes() == slots.sizes() && idx.size(0) == q.size(0) &&
                  slots.size(0) == q.size(0) && idx.size(3) == slots.size(2),
              "idx (T, H, 2, knn), slots and weights (T, H, knn) expected, got ", idx.sizes(), ", ", slots.sizes(),
              " and ", weights_in.sizes());
  const int64_t tokens = q.size(0), heads = q.size(1), knn = slots.size(2), n = keys.size(2), dim = q.size(3);
  auto [grad_weights, unique, rows] =
      bag_backward(table, slots.reshape({tokens, heads * knn}), weights_in.reshape({tokens, heads * knn}), grad_out, rows_out);
  auto weights = weights_in.contiguous();
  auto grad_halves = at::empty({tokens, heads, 2, knn}, weights.options());  // both halves: the score's gradient
  AT_DISPATCH_FLOATING_TYPES(weights.scalar_type(), "product_read_backward", [&] {
    using T = scalar_t;
    const T* pw = weights.data_ptr<T>();
    const T* pg = grad_weights.data_ptr<T>();
    T* out = grad_halves.data_ptr<T>();
    const T temp = static_cast<T>(temperature);
    at::parallel_for(0, tokens * heads, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {  // softmax backward, w * (g - sum w g), then the division's
        const T* w = pw + r * knn;
        const T* g = pg + r * knn;
        T weighted = 0;  // sum w g
        for (int64_t j = 0; j < knn; ++j) weighted += w[j] * g[j];
        for (int64_t j = 0; j < knn; ++j) out[r * 2 * knn + j] = out[r * 2 * knn + knn + j] = w[j] * (g[j] - weighted) / temp;
      }
    });
  });
  auto [grad_q, grad_keys] = selected_scores_backward(q.reshape({tokens * heads * 2, dim}), keys.reshape({heads * 2 * n, dim}),
                                                      idx.reshape({tokens * heads * 2, knn}),
                                                      grad_halves.view({tokens * heads * 2, knn}), n);
  return {grad_q.view(q.sizes()), grad_keys.view(keys.sizes()), unique, rows};
}

// Lazy Adam on the given rows, in place (AdamW's update without weight decay, in its order of
// operations): m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2 (a row's mean g^2 when
// exp_avg_sq is (N,)); p += (-lr / (1 - beta1^t)) m / (sqrt(v / (1 - beta2^t)) + eps).
// param, exp_avg (N, d) and exp_avg_sq (N, d) or (N,) share one dtype; rows (U,) unique; grad (U, d).
void row_adam(at::Tensor param, at::Tensor exp_avg, at::Tensor exp_avg_sq, const at::Tensor& rows_in,
              const at::Tensor& grad_in, double lr, double beta1, double beta2, double eps, int64_t step) {
  check_cpu_float(param, "param");
  check_long(rows_in, "rows");
  TORCH_CHECK(exp_avg.scalar_type() == param.scalar_type() && exp_avg_sq.scalar_type() == param.scalar_type() &&
                  grad_in.scalar_type() == param.scalar_type(),
              "param, its moments and grad must share a dtype");
  TORCH_CHECK(param.dim() == 2 && param.is_contiguous() && exp_avg.sizes() == param.sizes() && exp_avg.is_contiguous(),
              "param and exp_avg must be contiguous (N, d)");
  const bool rowwise = exp_avg_sq.dim() == 1;
  TORCH_CHECK(exp_avg_sq.is_contiguous() && (rowwise ? exp_avg_sq.size(0) == param.size(0) : exp_avg_sq.sizes() == param.sizes()),
              "exp_avg_sq must be contiguous (N, d) or (N,)");
  TORCH_CHECK(rows_in.dim() == 1 && grad_in.dim() == 2 && grad_in.size(0) == rows_in.size(0) && grad_in.size(1) == param.size(1),
              "rows (U,) and grad (U, d) expected, got ", rows_in.sizes(), " and ", grad_in.sizes());
  TORCH_CHECK(step >= 1, "step must be >= 1, got ", step);
  auto rows = rows_in.contiguous(), grad = grad_in.contiguous();
  const int64_t n = param.size(0), d = param.size(1), count = rows.size(0);
  const int64_t* pi = rows.data_ptr<int64_t>();
  for (int64_t u = 0; u < count; ++u) {
    TORCH_CHECK(pi[u] >= 0 && pi[u] < n, "row ", pi[u], " outside [0, ", n, ")");
  }
  AT_DISPATCH_FLOATING_TYPES(param.scalar_type(), "row_adam", [&] {
    using T = scalar_t;
    const T w1 = static_cast<T>(1 - beta1), b2 = static_cast<T>(beta2), w2 = static_cast<T>(1 - beta2);
    const T bias2 = static_cast<T>(1 - std::pow(beta2, static_cast<double>(step)));
    const T scale = static_cast<T>(-lr / (1 - std::pow(beta1, static_cast<double>(step))));
    const T epsilon = static_cast<T>(eps);
    T* pp = param.data_ptr<T>();
    T* pm = exp_avg.data_ptr<T>();
    T* pv = exp_avg_sq.data_ptr<T>();
    const T* pg = grad.data_ptr<T>();
    at::parallel_for(0, count, kRowGrain, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        if (u + kPrefetchRows < end) {  // the rows are scattered over tables larger than the cache
          const int64_t ahead = pi[u + kPrefetchRows] * d;
          prefetch_row(pm + ahead, d);
          prefetch_row(pp + ahead, d);
          if (!rowwise) prefetch_row(pv + ahead, d);
        }
        const int64_t row = pi[u];
        adam_row(pp + row * d, pm + row * d, pv + (rowwise ? row : row * d), pg + u * d, d, rowwise, w1, b2, w2, bias2,
                 scale, epsilon);
      }
    });
  });
}

// sum_i x[i]^2 over a tensor of any shape, accumulated in float64 (float32 elements are widened one
// by one, never copied): partial sums of fixed blocks of kNormBlock elements, added in block order,
// so the result does not depend on the thread count. -> a float64 scalar tensor.
constexpr int64_t kNormBlock = 1 << 14;

template <typename T>
inline double squared_sum(const T* __restrict x, int64_t n) {
  double sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * static_cast<double>(x[i]);
  return sum;
}

at::Tensor squared_norm(const at::Tensor& x_in) {
  check_cpu_float(x_in, "x");
  auto x = x_in.contiguous();
  const int64_t n = x.numel(), blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(blocks);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "squared_norm", [&] {
    const scalar_t* px = x.data_ptr<scalar_t>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        partial[b] = squared_sum(px + b * kNormBlock, std::min(kNormBlock, n - b * kNormBlock));
      }
    });
  });
  double total = 0;
  for (const double p : partial) total += p;
  return at::scalar_tensor(total, x.options().dtype(at::kDouble));
}

// A sparse row gradient (rows in its one sparse dim) with unique, ascending rows, flagged as such:
// itself when flagged already; when its rows ascend strictly (one O(rows) scan), a tensor sharing
// its rows and values with the flag set; else coalesce() (sorts, sums duplicates). What autograd's
// gradient accumulation drops is the flag, not the order: the check is one call here where the same
// test in Python is several small ops.
at::Tensor as_coalesced(const at::Tensor& grad) {
  TORCH_CHECK(grad.is_sparse() && grad.device().is_cpu(), "as_coalesced: grad must be a sparse COO CPU tensor");
  if (grad.is_coalesced()) return grad;
  const auto rows = grad._indices();
  if (rows.size(0) == 1 && rows.is_contiguous()) {
    const int64_t* r = rows.data_ptr<int64_t>();
    const int64_t n = rows.size(1);
    bool ascending = true;
    for (int64_t i = 1; i < n; ++i) ascending &= r[i] > r[i - 1];
    if (ascending) {
      auto out = at::_sparse_coo_tensor_unsafe(rows, grad._values(), grad.sizes());
      out._coalesced_(true);
      return out;
    }
  }
  return grad.coalesce();
}

}  // namespace

TORCH_LIBRARY(memzoo_cpu, m) {
  m.def("pair_topk(Tensor scores1, Tensor scores2, int knn, int first_offset) -> (Tensor, Tensor)", &pair_topk);
  m.def("selected_scores_backward(Tensor q, Tensor keys, Tensor idx, Tensor grad, int n) -> (Tensor, Tensor)",
        &selected_scores_backward);
  m.def("bag_backward(Tensor table, Tensor slots, Tensor weights, Tensor grad_out, Tensor? rows_out) -> (Tensor, Tensor, Tensor)",
        &bag_backward);
  m.def("row_adam(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, Tensor grad, float lr, "
        "float beta1, float beta2, float eps, int step) -> ()",
        &row_adam);
  m.def("squared_norm(Tensor x) -> Tensor", &squared_norm);
  m.def("as_coalesced(Tensor grad) -> Tensor", &as_coalesced);
  m.def("normalise_rows(Tensor x, str kind, float eps) -> (Tensor, Tensor)", &normalise_rows);
  m.def("normalise_rows_backward(Tensor grad_y, Tensor y, Tensor rstd, str kind) -> Tensor", &normalise_rows_backward);
  m.def("product_read(Tensor scores, Tensor table, int knn, float temperature) -> (Tensor, Tensor, Tensor, Tensor)",
        &product_read);
  m.def("product_read_backward(Tensor q, Tensor keys, Tensor table, Tensor idx, Tensor slots, Tensor weights, "
        "Tensor grad_out, float temperature, Tensor? rows_out) -> (Tensor, Tensor, Tensor, Tensor)",
        &product_read_backward);
}
