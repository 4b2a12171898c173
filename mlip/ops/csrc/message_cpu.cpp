// Fused CPU kernels of the message step (see mlip/ops/cpu_message.py for the maths and the
// autograd wiring). One operator, mlip_cpu::contract, evaluates the derivative of the 4-linear
// form
//
//   L(x, y, w, z) = sum_e sum_c sum_t v_t x[snd(e), a_t, c] y[e, b_t] w[e, p_t, c] z[rcv(e), k_t, c]
//
// with respect to one slot (the "free" slot: 0 = x, 1 = y, 2 = w, 3 = z), given the other three.
// The terms t = (a, b, k, p, v) are the non-zero Clebsch-Gordan entries of the tensor product.
// Per-edge products are formed in a few cache-resident rows and never written to memory as
// [E, D, C] tensors; scatters go to per-thread buffers summed at the end (ScatterTarget). The
// weights w may be shared between edges (one row per pair of opposite edges, which have the same
// length): edge e reads row w_rows[e].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

// Edges per thread below which a kernel runs on one thread: waking the other threads costs more
// than a few hundred edges of work (a 27-atom molecule has ~450 edges).
constexpr int64_t kEdgeGrain = 1024;

struct Term {
  int64_t a, b, k, p;
  double v;
};

std::vector<Term> read_terms(const at::Tensor& idx, const at::Tensor& val) {
  TORCH_CHECK(idx.dim() == 2 && idx.size(1) == 4 && idx.scalar_type() == at::kLong, "terms: int64 [nnz, 4]");
  TORCH_CHECK(val.dim() == 1 && val.size(0) == idx.size(0) && val.scalar_type() == at::kDouble,
              "values: float64 [nnz]");
  auto ic = idx.contiguous();
  auto vc = val.contiguous();
  const int64_t* ip = ic.data_ptr<int64_t>();
  const double* vp = vc.data_ptr<double>();
  std::vector<Term> out(idx.size(0));
  for (int64_t t = 0; t < idx.size(0); ++t) out[t] = {ip[4 * t], ip[4 * t + 1], ip[4 * t + 2], ip[4 * t + 3], vp[t]};
  return out;
}

// A group of terms sharing (outer, p): the kernels form sum_t v_t y[b_t] row[inner_t] once per
// group and multiply it by the w (or z) row of the group.
struct Group {
  int64_t outer, p;
  std::vector<std::tuple<int64_t, int64_t, double>> inner;  // (component, b, v)
};

// Terms grouped by (outer, p). outer = k, inner = a: the forward message (free z) and the weight
// gradient (free w); outer = a, inner = k: the feature gradient (free x).
std::vector<Group> term_groups(const std::vector<Term>& terms, bool outer_is_k) {
  std::vector<Group> groups;
  for (const Term& t : terms) {
    int64_t outer = outer_is_k ? t.k : t.a, inner = outer_is_k ? t.a : t.k;
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const Group& g) { return g.outer == outer && g.p == t.p; });
    if (it == groups.end()) {
      groups.push_back({outer, t.p, {}});
      it = groups.end() - 1;
    }
    it->inner.emplace_back(inner, t.b, t.v);
  }
  return groups;
}

// out[c] += m[c] * sum over the group's terms of v y[b] rows[comp, c]: one group of the node and
// weight kernels (tmp: C scratch values; with a compile-time channel count CC it is a local
// array). The pointers never alias (output, gathered rows and weights are different tensors):
// __restrict__ spares the compiler runtime alias checks around every 64-channel loop.
template <typename T, int CC>
inline void add_group(T* __restrict__ out, const T* __restrict__ m, const Group& grp, const T* __restrict__ rows,
                      const T* __restrict__ y, int64_t C, T* __restrict__ tmp) {
  if constexpr (CC > 0) {
    T acc[CC] = {};
    for (const auto& [comp, b, v] : grp.inner) {
      const T coef = T(v) * y[b];
      const T* __restrict__ r = rows + comp * CC;
      for (int c = 0; c < CC; ++c) acc[c] += coef * r[c];
    }
    for (int c = 0; c < CC; ++c) out[c] += m[c] * acc[c];
  } else {
    std::fill(tmp, tmp + C, T(0));
    for (const auto& [comp, b, v] : grp.inner) {
      const T coef = T(v) * y[b];
      const T* __restrict__ r = rows + comp * C;
      for (int64_t c = 0; c < C; ++c) tmp[c] += coef * r[c];
    }
    for (int64_t c = 0; c < C; ++c) out[c] += m[c] * tmp[c];
  }
}

// Edges of each row of w, as (ptr, perm) (counting sort); empty without w_rows (row = edge).
void rows_csr(const int64_t* w_rows, int64_t E, int64_t R, std::vector<int64_t>& ptr, std::vector<int64_t>& perm) {
  if (!w_rows) return;
  ptr.assign(R + 1, 0);
  for (int64_t e = 0; e < E; ++e) ++ptr[w_rows[e] + 1];
  for (int64_t q = 0; q < R; ++q) ptr[q + 1] += ptr[q];
  perm.resize(E);
  std::vector<int64_t> fill(ptr.begin(), ptr.end() - 1);
  for (int64_t e = 0; e < E; ++e) perm[fill[w_rows[e]]++] = e;
}

// sum_c a[c] b[c] d[c] in 16 interleaved partial sums (a fixed order the compiler may vectorise;
// a single running sum would have to stay scalar without -ffast-math)
template <typename T, int CC>
inline T dot3(const T* a, const T* b, const T* d, int64_t C) {
  constexpr int L = 16;
  T part[L] = {};
  int64_t c = 0;
  for (; c + L <= C; c += L)
    for (int l = 0; l < L; ++l) part[l] += a[c + l] * b[c + l] * d[c + l];
  T s = 0;
  for (int l = 0; l < L; ++l) s += part[l];
  for (; c < C; ++c) s += a[c] * b[c] * d[c];
  return s;
}

// Row of w for edge e: w_rows[e] when the weights are shared (pairs of opposite edges), else e.
inline int64_t w_row(const int64_t* w_rows, int64_t e) { return w_rows ? w_rows[e] : e; }

// A node-sized output that several threads scatter into: thread 0 adds into the output itself,
// the others into private zeroed copies (allocated once: a thread may run several chunks under
// torch's native parallel backend), summed into the output by reduce(). Deterministic for a given
// thread count, any edge order. A null output stays null (gradient not needed).
template <typename T>
class ScatterTarget {
 public:
  ScatterTarget(T* out, int64_t n) : out_(out), n_(n), nt_(at::get_num_threads()), priv_(std::max(nt_ - 1, 0)) {}

  T* for_this_thread() {
    const int tid = at::get_thread_num();
    if (!out_ || tid <= 0 || tid >= nt_) return out_;
    auto& buf = priv_[tid - 1];
    if (buf.empty()) buf.assign(n_, T(0));
    return buf.data();
  }

  void reduce() {
    for (auto& buf : priv_) {
      if (buf.empty()) continue;
      const T* bp = buf.data();
      T* op = out_;
      at::parallel_for(0, n_, 4096, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) op[i] += bp[i];
      });
    }
  }

 private:
  T* out_;
  int64_t n_;
  int nt_;
  std::vector<std::vector<T>> priv_;
};

template <typename T, int CC>
at::Tensor node_kernel(const at::Tensor& gathered, const at::Tensor& y, const at::Tensor& w, const int64_t* w_rows,
                       const at::Tensor& gather_idx, const at::Tensor& scatter_idx, int64_t num_nodes,
                       int64_t dim_out, const std::vector<Group>& groups) {
  const int64_t E = y.size(0), dy = y.size(1), np = w.size(1), C = CC ? CC : w.size(2), dg = gathered.size(1);
  auto out = at::zeros({num_nodes, dim_out, C}, w.options());
  if (E == 0 || num_nodes == 0) return out;
  const T* gp = gathered.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const int64_t* gi = gather_idx.data_ptr<int64_t>();
  const int64_t* si = scatter_idx.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  const int64_t row = dim_out * C;
  ScatterTarget<T> target(op, num_nodes * row);
  at::parallel_for(0, E, kEdgeGrain, [&](int64_t begin, int64_t end) {
    T* dst = target.for_this_thread();
    std::vector<T> tmp(C);
    T* tp = tmp.data();
    for (int64_t e = begin; e < end; ++e) {
      const T* g = gp + gi[e] * dg * C;
      const T* ye = yp + e * dy;
      const T* we = wp + w_row(w_rows, e) * np * C;
      T* o = dst + si[e] * row;
      for (const Group& grp : groups) add_group<T, CC>(o + grp.outer * C, we + grp.p * C, grp, g, ye, C, tp);
    }
  });
  target.reduce();
  return out;
}

// free w: out[q, p, c] = sum over the edges e of row q (one edge, or the two edges of a pair) of
//   sum_k z[r, k, c] * sum_{(a, b)} v y[e, b] x[s, a, c]
// Parallel over rows, so the edges sharing a row are summed without races and every output row
// is written once (no zero-filled [R, P, C] tensor).
template <typename T, int CC>
at::Tensor edge_w_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& z, const at::Tensor& snd,
                         const at::Tensor& rcv, int64_t np, const int64_t* w_rows, int64_t num_rows,
                         const std::vector<Term>& terms) {
  const int64_t E = y.size(0), dy = y.size(1), C = CC ? CC : x.size(2), dx = x.size(1), dz = z.size(1);
  const int64_t R = w_rows ? num_rows : E;
  auto out = at::empty({R, np, C}, x.options());
  // edges of each row (counting sort; identity without w_rows)
  std::vector<int64_t> ptr, perm;
  rows_csr(w_rows, E, R, ptr, perm);
  // groups keyed by (k, p): z row times a combination of x rows
  const std::vector<Group> groups = term_groups(terms, true);
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* zp = z.data_ptr<T>();
  const int64_t* sp = snd.data_ptr<int64_t>();
  const int64_t* rp = rcv.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, R, kEdgeGrain / 2, [&](int64_t begin, int64_t end) {
    std::vector<T> tmp(C);
    T* tp = tmp.data();
    for (int64_t q = begin; q < end; ++q) {
      T* oq = op + q * np * C;
      std::fill(oq, oq + np * C, T(0));
      const int64_t first = w_rows ? ptr[q] : q, last = w_rows ? ptr[q + 1] : q + 1;
      for (int64_t i = first; i < last; ++i) {
        const int64_t e = w_rows ? perm[i] : i;
        const T* xs = xp + sp[e] * dx * C;
        const T* zr = zp + rp[e] * dz * C;
        const T* ye = yp + e * dy;
        for (const Group& grp : groups) add_group<T, CC>(oq + grp.p * C, zr + grp.outer * C, grp, xs, ye, C, tp);
      }
    }
  });
  return out;
}

// free y: out[e, b] = sum_t v sum_c x[s, a, c] w[e, p, c] z[r, k, c]; one dot product per distinct (a, p, k)
template <typename T, int CC>
at::Tensor edge_y_kernel(const at::Tensor& x, const at::Tensor& w, const int64_t* w_rows, const at::Tensor& z,
                         const at::Tensor& snd, const at::Tensor& rcv, int64_t dy, const std::vector<Term>& terms) {
  const int64_t E = snd.size(0), np = w.size(1), C = CC ? CC : w.size(2), dx = x.size(1), dz = z.size(1);
  auto out = at::zeros({E, dy}, w.options());
  struct Dot {
    int64_t a, p, k;
    std::vector<std::pair<int64_t, double>> to;  // (b, v)
  };
  std::vector<Dot> dots;
  for (const Term& t : terms) {
    auto it = std::find_if(dots.begin(), dots.end(),
                           [&](const Dot& d) { return d.a == t.a && d.p == t.p && d.k == t.k; });
    if (it == dots.end()) {
      dots.push_back({t.a, t.p, t.k, {}});
      it = dots.end() - 1;
    }
    it->to.emplace_back(t.b, t.v);
  }
  const T* xp = x.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* zp = z.data_ptr<T>();
  const int64_t* sp = snd.data_ptr<int64_t>();
  const int64_t* rp = rcv.data_ptr<int64_t>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, E, kEdgeGrain, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const T* xs = xp + sp[e] * dx * C;
      const T* zr = zp + rp[e] * dz * C;
      const T* we = wp + w_row(w_rows, e) * np * C;
      T* oe = op + e * dy;
      for (const Dot& d : dots) {
        const T* xr = xs + d.a * C;
        const T* wr = we + d.p * C;
        const T* zk = zr + d.k * C;
        const T s = dot3<T, CC>(xr, wr, zk, C);
        for (const auto& [b, v] : d.to) oe[b] += T(v) * s;
      }
    }
  });
  return out;
}

// Indices are trusted by the loops: check them once (O(E)).
const int64_t* check_indices(const at::Tensor& rcv, const at::Tensor& snd, const at::Tensor& wr, int64_t num_nodes,
                             int64_t num_w_rows) {
  TORCH_CHECK(rcv.scalar_type() == at::kLong && snd.scalar_type() == at::kLong, "edge indices must be int64");
  TORCH_CHECK(wr.numel() == 0 || (wr.scalar_type() == at::kLong && wr.numel() == rcv.numel()),
              "w_rows must be empty or int64 [E]");
  const int64_t* wrp = wr.numel() ? wr.data_ptr<int64_t>() : nullptr;
  const int64_t E = rcv.numel();
  const int64_t* r = rcv.data_ptr<int64_t>();
  const int64_t* s = snd.data_ptr<int64_t>();
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK(r[e] >= 0 && r[e] < num_nodes && s[e] >= 0 && s[e] < num_nodes, "edge ", e,
                " refers to a node outside [0, ", num_nodes, ")");
    TORCH_CHECK(!wrp || (wrp[e] >= 0 && wrp[e] < num_w_rows), "w_rows[", e, "] outside [0, ", num_w_rows, ")");
  }
  return wrp;
}

// All needed first derivatives of L in one pass over the edges, given all four slots (the
// slot being differentiated in the caller holds its cotangent): x[snd], z[rcv], y[e] and the w
// row are gathered once for every output. Parallel over rows of w (so w's gradient is summed
// per row without races); node-side gradients go to per-thread buffers.
template <typename T, int CC>
std::vector<at::Tensor> grads_kernel(const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
                                     const at::Tensor& z, const at::Tensor& snd, const at::Tensor& rcv,
                                     const int64_t* w_rows, int64_t num_nodes, const std::vector<bool>& need,
                                     const std::vector<Term>& terms) {
  const int64_t E = snd.size(0), N = num_nodes, C = CC ? CC : x.size(2);
  const int64_t dx = x.size(1), dy = y.size(1), np = w.size(1), dz = z.size(1), R = w.size(0);
  auto opts = x.options();
  at::Tensor gx = need[0] ? at::zeros({N, dx, C}, opts) : at::empty({0}, opts);
  at::Tensor gy = need[1] ? at::empty({E, dy}, opts) : at::empty({0}, opts);
  at::Tensor gw = need[2] ? at::empty({R, np, C}, opts) : at::empty({0}, opts);
  at::Tensor gz = need[3] ? at::zeros({N, dz, C}, opts) : at::empty({0}, opts);
  std::vector<int64_t> ptr, perm;
  rows_csr(w_rows, E, R, ptr, perm);
  const T* xp = x.data_ptr<T>();
  const T* yp = y.data_ptr<T>();
  const T* wp = w.data_ptr<T>();
  const T* zp = z.data_ptr<T>();
  const int64_t* sp = snd.data_ptr<int64_t>();
  const int64_t* rp = rcv.data_ptr<int64_t>();
  T* gxp = need[0] ? gx.data_ptr<T>() : nullptr;
  T* gyp = need[1] ? gy.data_ptr<T>() : nullptr;
  T* gwp = need[2] ? gw.data_ptr<T>() : nullptr;
  T* gzp = need[3] ? gz.data_ptr<T>() : nullptr;
  ScatterTarget<T> target_x(gxp, N * dx * C), target_z(gzp, N * dz * C);
  at::parallel_for(0, R, kEdgeGrain / 2, [&](int64_t begin, int64_t end) {
    T* gxd = target_x.for_this_thread();
    T* gzd = target_z.for_this_thread();
    for (int64_t q = begin; q < end; ++q) {
      const T* wq = wp + q * np * C;
      T* gwq = gwp ? gwp + q * np * C : nullptr;
      if (gwq) std::fill(gwq, gwq + np * C, T(0));
      const int64_t first = w_rows ? ptr[q] : q, last = w_rows ? ptr[q + 1] : q + 1;
      for (int64_t i = first; i < last; ++i) {
        const int64_t e = w_rows ? perm[i] : i;
        const int64_t s = sp[e], r = rp[e];
        const T* xs = xp + s * dx * C;
        const T* zr = zp + r * dz * C;
        const T* ye = yp + e * dy;
        T* gye = gyp ? gyp + e * dy : nullptr;
        if (gye) std::fill(gye, gye + dy, T(0));
        for (const Term& t : terms) {
          const T* xa = xs + t.a * C;
          const T* wr = wq + t.p * C;
          const T* zk = zr + t.k * C;
          const T cv = T(t.v) * ye[t.b];
          if (gxd) {
            T* o = gxd + (s * dx + t.a) * C;
            for (int64_t c = 0; c < C; ++c) o[c] += cv * wr[c] * zk[c];
          }
          if (gzd) {
            T* o = gzd + (r * dz + t.k) * C;
            for (int64_t c = 0; c < C; ++c) o[c] += cv * xa[c] * wr[c];
          }
          if (gwq) {
            T* o = gwq + t.p * C;
            for (int64_t c = 0; c < C; ++c) o[c] += cv * xa[c] * zk[c];
          }
          if (gye) {
            gye[t.b] += T(t.v) * dot3<T, CC>(xa, wr, zk, C);
          }
        }
      }
    }
  });
  target_x.reduce();
  target_z.reduce();
  return {gx, gy, gw, gz};
}

// Calls f.template operator()<CC>() with the channel count as a compile-time constant for the
// common widths (fixed trip counts: fully unrolled, no remainder loops), else CC = 0 (runtime).
template <typename F>
auto with_channels(int64_t C, F&& f) {
  switch (C) {
    case 16: return f(std::integral_constant<int, 16>{});
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: return f(std::integral_constant<int, 0>{});
  }
}

at::Tensor contract(int64_t free, const at::Tensor& idx, const at::Tensor& val, const at::Tensor& x,
                    const at::Tensor& y, const at::Tensor& w, const at::Tensor& z, const at::Tensor& receiver,
                    const at::Tensor& sender, const at::Tensor& w_rows, int64_t num_w_rows, int64_t num_nodes,
                    int64_t dim_free) {
  TORCH_CHECK(free >= 0 && free <= 3, "free slot must be 0 (x), 1 (y), 2 (w) or 3 (z)");
  const std::vector<Term> terms = read_terms(idx, val);
  auto rcv = receiver.contiguous();
  auto snd = sender.contiguous();
  // w_rows [E]: the row of w of each edge (weights shared by opposite edges); empty: row = edge
  auto wr = w_rows.contiguous();
  const int64_t* wrp = check_indices(rcv, snd, wr, num_nodes, num_w_rows);
  TORCH_CHECK(free == 2 || !wrp || w.size(0) == num_w_rows, "w must have num_w_rows rows");
  // the three given slots (the free one is an unused placeholder)
  auto xc = free == 0 ? x : x.contiguous();
  auto yc = free == 1 ? y : y.contiguous();
  auto wc = free == 2 ? w : w.contiguous();
  auto zc = free == 3 ? z : z.contiguous();
  const at::Tensor& ref = free == 2 ? xc : wc;
  TORCH_CHECK(ref.device().is_cpu(), "mlip_cpu::contract runs on CPU tensors");
  at::Tensor out;
  const int64_t channels = ref.size(2);
  AT_DISPATCH_FLOATING_TYPES(ref.scalar_type(), "mlip_cpu_contract", [&] {
    with_channels(channels, [&](auto cc) {
      constexpr int CC = decltype(cc)::value;
      switch (free) {
        case 3:
          out = node_kernel<scalar_t, CC>(xc, yc, wc, wrp, snd, rcv, num_nodes, dim_free, term_groups(terms, true));
          break;
        case 0:
          out = node_kernel<scalar_t, CC>(zc, yc, wc, wrp, rcv, snd, num_nodes, dim_free, term_groups(terms, false));
          break;
        case 2:
          out = edge_w_kernel<scalar_t, CC>(xc, yc, zc, snd, rcv, dim_free, wrp, num_w_rows, terms);
          break;
        default:
          out = edge_y_kernel<scalar_t, CC>(xc, wc, wrp, zc, snd, rcv, dim_free, terms);
      }
      return 0;
    });
  });
  return out;
}

}  // namespace


std::vector<at::Tensor> grads(const at::Tensor& idx, const at::Tensor& val, const at::Tensor& x, const at::Tensor& y,
                              const at::Tensor& w, const at::Tensor& z, const at::Tensor& receiver,
                              const at::Tensor& sender, const at::Tensor& w_rows, int64_t num_nodes, bool need_x,
                              bool need_y, bool need_w, bool need_z) {
  const std::vector<Term> terms = read_terms(idx, val);
  auto rcv = receiver.contiguous();
  auto snd = sender.contiguous();
  auto wr = w_rows.contiguous();
  auto wc = w.contiguous();
  const int64_t* wrp = check_indices(rcv, snd, wr, num_nodes, wc.size(0));
  auto xc = x.contiguous();
  auto yc = y.contiguous();
  auto zc = z.contiguous();
  TORCH_CHECK(xc.device().is_cpu(), "mlip_cpu::grads runs on CPU tensors");
  TORCH_CHECK(wrp || wc.size(0) == rcv.numel(), "w must have one row per edge without w_rows");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "mlip_cpu_grads", [&] {
    with_channels(xc.size(2), [&](auto cc) {
      constexpr int CC = decltype(cc)::value;
      out = grads_kernel<scalar_t, CC>(xc, yc, wc, zc, snd, rcv, wrp, num_nodes, {need_x, need_y, need_w, need_z},
                                       terms);
      return 0;
    });
  });
  return out;
}

TORCH_LIBRARY(mlip_cpu, m) {
  m.def("contract(int free, Tensor idx, Tensor val, Tensor x, Tensor y, Tensor w, Tensor z, Tensor receiver, "
        "Tensor sender, Tensor w_rows, SymInt num_w_rows, SymInt num_nodes, int dim_free) -> Tensor");
  m.def("grads(Tensor idx, Tensor val, Tensor x, Tensor y, Tensor w, Tensor z, Tensor receiver, Tensor sender, "
        "Tensor w_rows, SymInt num_nodes, bool need_x, bool need_y, bool need_w, bool need_z) -> Tensor[]");
  m.impl("contract", c10::DispatchKey::CPU, TORCH_FN(contract));
  m.impl("grads", c10::DispatchKey::CPU, TORCH_FN(grads));
}

// ---------------------------------------------------------------------------------------------
// SiLU with a gain, and its first and second derivatives, each in one pass over memory (the
// radial MLP's activation; in force training autograd would otherwise spend a dozen passes on
// the derivatives of sigmoid products). s = sigmoid(x) is computed by torch (vectorised exp)
// and passed in:
//   f = g x s,  f' = g s (1 + x (1 - s)),  f'' = g s (1 - s) (2 + x (1 - 2 s))
// ---------------------------------------------------------------------------------------------
namespace {

void check_same(const at::Tensor& a, const at::Tensor& b, const char* what) {
  TORCH_CHECK(a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type(), what, ": shapes or dtypes differ");
}

// The element-wise loops live in functions whose pointers are __restrict__: inside a lambda the
// compiler cannot rule out aliasing between six captured pointers, gives up on runtime checks and
// emits scalar code (silu_gain_grad2 ran ~8x slower than its one-output sibling).
template <typename scalar_t>
void silu_gain_range(int64_t n, const scalar_t* __restrict__ x, const scalar_t* __restrict__ s,
                     scalar_t* __restrict__ out, scalar_t g) {
  for (int64_t i = 0; i < n; ++i) out[i] = g * x[i] * s[i];
}

template <typename scalar_t>
void silu_gain_grad_range(int64_t n, const scalar_t* __restrict__ x, const scalar_t* __restrict__ s,
                          const scalar_t* __restrict__ gy, scalar_t* __restrict__ out, scalar_t g) {
  const scalar_t one = scalar_t(1);
  for (int64_t i = 0; i < n; ++i) out[i] = gy[i] * g * s[i] * (one + x[i] * (one - s[i]));
}

template <typename scalar_t>
void silu_gain_grad2_range(int64_t n, const scalar_t* __restrict__ x, const scalar_t* __restrict__ s,
                           const scalar_t* __restrict__ gy, const scalar_t* __restrict__ ggx,
                           scalar_t* __restrict__ dx, scalar_t* __restrict__ dgy, scalar_t g) {
  const scalar_t one = scalar_t(1), two = scalar_t(2);
  for (int64_t i = 0; i < n; ++i) {
    const scalar_t si = s[i], xi = x[i], hg = ggx[i] * g;
    dgy[i] = hg * si * (one + xi * (one - si));
    dx[i] = hg * gy[i] * si * (one - si) * (two + xi * (one - two * si));
  }
}

constexpr int64_t kElementGrain = 16384;

// g x s
at::Tensor silu_gain(const at::Tensor& x_, const at::Tensor& s_, double gain) {
  auto x = x_.contiguous();
  auto s = s_.contiguous();
  check_same(x, s, "silu_gain");
  auto out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlip_silu_gain", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElementGrain, [&](int64_t b, int64_t e) {
      silu_gain_range<scalar_t>(e - b, xp + b, sp + b, op + b, scalar_t(gain));
    });
  });
  return out;
}

// gy * f'(x)
at::Tensor silu_gain_grad(const at::Tensor& x_, const at::Tensor& s_, const at::Tensor& gy_, double gain) {
  auto x = x_.contiguous();
  auto s = s_.contiguous();
  auto gy = gy_.contiguous();
  check_same(x, s, "silu_gain_grad");
  check_same(x, gy, "silu_gain_grad");
  auto out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlip_silu_gain_grad", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElementGrain, [&](int64_t b, int64_t e) {
      silu_gain_grad_range<scalar_t>(e - b, xp + b, sp + b, gp + b, op + b, scalar_t(gain));
    });
  });
  return out;
}

// derivatives of gx = gy * f'(x), contracted with ggx: (ggx gy f''(x), ggx f'(x))
std::tuple<at::Tensor, at::Tensor> silu_gain_grad2(const at::Tensor& x_, const at::Tensor& s_,
                                                   const at::Tensor& gy_, const at::Tensor& ggx_, double gain) {
  auto x = x_.contiguous();
  auto s = s_.contiguous();
  auto gy = gy_.contiguous();
  auto ggx = ggx_.contiguous();
  check_same(x, s, "silu_gain_grad2");
  check_same(x, gy, "silu_gain_grad2");
  check_same(x, ggx, "silu_gain_grad2");
  auto dx = at::empty_like(x);
  auto dgy = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mlip_silu_gain_grad2", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* sp = s.data_ptr<scalar_t>();
    const scalar_t* gp = gy.data_ptr<scalar_t>();
    const scalar_t* hp = ggx.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    scalar_t* dgp = dgy.data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kElementGrain, [&](int64_t b, int64_t e) {
      silu_gain_grad2_range<scalar_t>(e - b, xp + b, sp + b, gp + b, hp + b, dxp + b, dgp + b, scalar_t(gain));
    });
  });
  return {dx, dgy};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mlip_cpu, m) {
  m.def("silu_gain(Tensor x, Tensor s, float gain) -> Tensor");
  m.def("silu_gain_grad(Tensor x, Tensor s, Tensor gy, float gain) -> Tensor");
  m.def("silu_gain_grad2(Tensor x, Tensor s, Tensor gy, Tensor ggx, float gain) -> (Tensor, Tensor)");
  m.impl("silu_gain", c10::DispatchKey::CPU, TORCH_FN(silu_gain));
  m.impl("silu_gain_grad", c10::DispatchKey::CPU, TORCH_FN(silu_gain_grad));
  m.impl("silu_gain_grad2", c10::DispatchKey::CPU, TORCH_FN(silu_gain_grad2));
}
