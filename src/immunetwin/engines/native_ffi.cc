// XLA FFI handlers that call the generated native solvers (immunetwin/engines/native.py) from inside
// a compiled JAX program, without Python: what immunetwin/engines/native_jax.py otherwise does with
// jax.pure_callback (~0.17 ms of Python and conversions per call on the 2-core AMD EPYC).
//
// The generated modules are built by cffi; Python registers each solver's `itn_solve` here under the
// module's key (itn_ffi_add) before any program that names it is traced. A program names solvers by
// key, never by address, so a program taken from JAX's persistent compilation cache by another
// process finds the solvers that process has built, or fails with the key named.
//
// Both handlers treat every leading axis of their inputs as rows (the batch axes JAX adds with
// vmap_method="broadcast_all": experiments, chains, points), solve each distinct row once, and give
// exactly what the pure_callback path gives: the same rows, seeds and solvers, in the same order.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using SolveFn = void (*)(int64_t, int64_t, int64_t, int64_t, const double *, const double *,
                         const uint8_t *, const double *, const double *, const double *,
                         const double *, const uint8_t *, const double *, int64_t,
                         const int64_t *, double, double, int64_t, double *, int64_t *, int64_t *);

struct Solver {
  SolveFn fn;
  int64_t n, nc;              // the solver's own states and constants (a sensitivity system's: augmented)
  std::vector<int64_t> cols;  // the quantities it writes, in order
};

struct Registry {
  std::mutex lock;
  std::unordered_map<std::string, Solver> solvers;
};

Registry &registry() {
  static Registry r;  // the solvers this process has loaded, as long as it runs
  return r;
}

bool find(std::string_view key, Solver *out) {
  Registry &r = registry();
  std::lock_guard<std::mutex> guard(r.lock);
  auto it = r.solvers.find(std::string(key));
  if (it == r.solvers.end()) return false;
  *out = it->second;
  return true;
}

int64_t rows_of(ffi::Buffer<ffi::F64> &a, int core) {
  auto dims = a.dimensions();
  int64_t rows = 1;
  for (size_t i = 0; i + core < dims.size(); i++) rows *= dims[i];
  return rows;
}

// For each row, the index of the first row with the same bits in every input; and those first rows.
void distinct(const std::vector<std::pair<const double *, int64_t>> &inputs, int64_t rows,
              std::vector<int64_t> *first, std::vector<int64_t> *rank) {
  std::unordered_map<std::string, int64_t> seen;
  std::string bytes;
  rank->resize(rows);
  for (int64_t i = 0; i < rows; i++) {
    bytes.clear();
    for (auto &[data, width] : inputs)
      bytes.append(reinterpret_cast<const char *>(data + i * width), width * sizeof(double));
    auto [it, fresh] = seen.emplace(bytes, static_cast<int64_t>(first->size()));
    if (fresh) first->push_back(i);
    (*rank)[i] = it->second;
  }
}

// Solve `rows` rows with given start values, no schedule, over `threads` threads (rows split in
// contiguous ranges, as native.run_native does).
void solve_rows(const Solver &s, int64_t rows, int64_t t_count, const double *ts, const double *y0,
                const double *c, double rtol, double atol, int64_t max_steps, int64_t threads,
                double *out, int64_t *status) {
  const int64_t n = s.n, nc = s.nc, ncol = static_cast<int64_t>(s.cols.size());
  std::vector<double> st(rows, INFINITY), sdy(rows * (n > 0 ? n : 1), 0.0),
      sval(rows * (nc > 0 ? nc : 1), 0.0), d(rows, 0.0);
  std::vector<uint8_t> smask(rows * (nc > 0 ? nc : 1), 0), m(rows, 0);
  std::vector<int64_t> steps(rows, 0);
  auto part = [&](int64_t lo, int64_t hi) {
    if (hi <= lo) return;
    s.fn(hi - lo, t_count, t_count, 1, ts + lo * t_count, d.data() + lo, m.data() + lo,
         y0 + lo * n, c + lo * nc, st.data() + lo, sdy.data() + lo * n, smask.data() + lo * nc,
         sval.data() + lo * nc, ncol, s.cols.data(), rtol, atol, max_steps, out + lo * t_count * ncol,
         status + lo, steps.data() + lo);
  };
  const int64_t lanes = 4;  // native.LANES: fewer rows than two vectors stay on one thread
  const int64_t workers = threads < 1 ? 1 : threads;
  if (workers == 1 || rows <= lanes) {
    part(0, rows);
    return;
  }
  const int64_t used = workers < rows ? workers : rows;
  std::vector<int64_t> bounds(used + 1);
  for (int64_t w = 0; w <= used; w++) bounds[w] = (rows * w) / used;  // numpy.linspace(...).astype(int)
  std::vector<std::thread> pool;
  for (int64_t w = 1; w < used; w++) pool.emplace_back(part, bounds[w], bounds[w + 1]);
  part(bounds[0], bounds[1]);
  for (auto &t : pool) t.join();
}

ffi::Error Values(ffi::Buffer<ffi::F64> ts, ffi::Buffer<ffi::F64> y0, ffi::Buffer<ffi::F64> c,
                  ffi::ResultBuffer<ffi::F64> values, ffi::ResultBuffer<ffi::S32> status,
                  std::string_view key, double rtol, double atol, int64_t max_steps,
                  int64_t threads) {
  Solver s;
  if (!find(key, &s))
    return ffi::Error(ffi::ErrorCode::kNotFound,
                      "immunetwin native solver " + std::string(key) + " is not loaded in this process");
  const int64_t rows = rows_of(ts, 1), t_count = ts.dimensions().back();
  const int64_t n = s.n, nc = s.nc, q = static_cast<int64_t>(s.cols.size());
  if (rows_of(y0, 1) != rows || rows_of(c, 1) != rows || y0.dimensions().back() != n ||
      c.dimensions().back() != nc)
    return ffi::Error::InvalidArgument("immunetwin native values: input shapes do not match the solver");
  if (values->element_count() != static_cast<size_t>(rows * t_count * q) ||
      status->element_count() != static_cast<size_t>(rows))
    return ffi::Error::InvalidArgument("immunetwin native values: result shapes do not match the solver");
  std::vector<int64_t> first, rank;
  distinct({{ts.typed_data(), t_count}, {y0.typed_data(), n}, {c.typed_data(), nc}}, rows, &first, &rank);
  const int64_t u = static_cast<int64_t>(first.size());
  std::vector<double> t_u(u * t_count), y_u(u * n), c_u(u * nc), out(u * t_count * q, NAN);
  for (int64_t r = 0; r < u; r++) {
    std::memcpy(&t_u[r * t_count], ts.typed_data() + first[r] * t_count, t_count * sizeof(double));
    std::memcpy(&y_u[r * n], y0.typed_data() + first[r] * n, n * sizeof(double));
    std::memcpy(&c_u[r * nc], c.typed_data() + first[r] * nc, nc * sizeof(double));
  }
  std::vector<int64_t> st(u, 0);
  solve_rows(s, u, t_count, t_u.data(), y_u.data(), c_u.data(), rtol, atol, max_steps, threads,
             out.data(), st.data());
  double *v = values->typed_data();
  int32_t *code = status->typed_data();
  for (int64_t i = 0; i < rows; i++) {
    std::memcpy(v + i * t_count * q, &out[rank[i] * t_count * q], t_count * q * sizeof(double));
    code[i] = static_cast<int32_t>(st[rank[i]]);
  }
  return ffi::Error::Success();
}

// States and forward sensitivities (native_jax.NativeFunctions._solve_sensitivities): the distinct
// rows' directions are solved `per` at a time, with the solver named for that many directions, in
// `groups` rows per point; states from each point's first group; a failed point's sensitivities 0.
ffi::Error Sensitivities(ffi::Buffer<ffi::F64> ts, ffi::Buffer<ffi::F64> y0, ffi::Buffer<ffi::F64> c,
                         ffi::Buffer<ffi::F64> dy0, ffi::Buffer<ffi::F64> dc,
                         ffi::ResultBuffer<ffi::F64> states, ffi::ResultBuffer<ffi::F64> sens,
                         ffi::ResultBuffer<ffi::S32> status, std::string_view full,
                         std::string_view split, int64_t directions, int64_t n, int64_t nc,
                         double rtol, double atol, int64_t max_steps, int64_t threads) {
  const int64_t rows = rows_of(ts, 1), t_count = ts.dimensions().back(), dirs = directions;
  if (rows_of(y0, 1) != rows || rows_of(c, 1) != rows || rows_of(dy0, 2) != rows ||
      rows_of(dc, 2) != rows || y0.dimensions().back() != n || c.dimensions().back() != nc ||
      dy0.element_count() != static_cast<size_t>(rows * n * dirs) ||
      dc.element_count() != static_cast<size_t>(rows * nc * dirs))
    return ffi::Error::InvalidArgument(
        "immunetwin native sensitivities: input shapes do not match the solver");
  if (states->element_count() != static_cast<size_t>(rows * t_count * n) ||
      sens->element_count() != static_cast<size_t>(rows * t_count * n * dirs) ||
      status->element_count() != static_cast<size_t>(rows))
    return ffi::Error::InvalidArgument("immunetwin native sensitivities: result shapes do not match");
  std::vector<int64_t> first, rank;
  distinct({{ts.typed_data(), t_count},
            {y0.typed_data(), n},
            {c.typed_data(), nc},
            {dy0.typed_data(), n * dirs},
            {dc.typed_data(), nc * dirs}},
           rows, &first, &rank);
  const int64_t u = static_cast<int64_t>(first.size());
  // the solver for u points: `split` lists one key per point count below the lanes, '' for none
  std::string_view key = full;
  {
    std::string_view rest = split;
    for (int64_t k = 1; k <= u && !rest.empty(); k++) {
      size_t comma = rest.find(',');
      std::string_view item = rest.substr(0, comma);
      if (k == u && !item.empty()) key = item;
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
    }
  }
  Solver s;
  if (!find(key, &s))
    return ffi::Error(ffi::ErrorCode::kNotFound,
                      "immunetwin native solver " + std::string(key) + " is not loaded in this process");
  const int64_t per = s.n / (n > 0 ? n : 1) - 1;
  if (per < 1 || s.n != n * (1 + per) || s.nc != nc * (1 + per) ||
      s.cols.size() != static_cast<size_t>(s.n))
    return ffi::Error::InvalidArgument("immunetwin native sensitivities: solver " + std::string(key) +
                                       " does not fit the model's sizes");
  const int64_t groups = (dirs + per - 1) / per, r_count = u * groups, na = s.n, nca = s.nc;
  std::vector<double> t_a(r_count * t_count), y_a(r_count * na, 0.0), c_a(r_count * nca, 0.0),
      out(r_count * t_count * na, NAN);
  const double *T = ts.typed_data(), *Y = y0.typed_data(), *C = c.typed_data(),
               *DY = dy0.typed_data(), *DC = dc.typed_data();
  for (int64_t r = 0; r < u; r++) {
    const int64_t p = first[r];
    for (int64_t g = 0; g < groups; g++) {
      const int64_t row = r * groups + g;
      std::memcpy(&t_a[row * t_count], T + p * t_count, t_count * sizeof(double));
      std::memcpy(&y_a[row * na], Y + p * n, n * sizeof(double));
      std::memcpy(&c_a[row * nca], C + p * nc, nc * sizeof(double));
      for (int64_t k = 0; k < per; k++) {
        const int64_t dir = g * per + k;
        if (dir >= dirs) break;  // padding directions: zero seeds
        for (int64_t i = 0; i < n; i++) y_a[row * na + n + k * n + i] = DY[(p * n + i) * dirs + dir];
        for (int64_t i = 0; i < nc; i++) c_a[row * nca + nc + k * nc + i] = DC[(p * nc + i) * dirs + dir];
      }
    }
  }
  std::vector<int64_t> st(r_count, 0);
  solve_rows(s, r_count, t_count, t_a.data(), y_a.data(), c_a.data(), rtol, atol, max_steps, threads,
             out.data(), st.data());
  double *S = states->typed_data(), *DS = sens->typed_data();
  int32_t *code = status->typed_data();
  for (int64_t i = 0; i < rows; i++) {
    const int64_t r = rank[i];
    int64_t failed = 0;
    for (int64_t g = 0; g < groups && !failed; g++) failed = st[r * groups + g];
    code[i] = static_cast<int32_t>(failed);
    for (int64_t t = 0; t < t_count; t++) {
      const double *o0 = &out[((r * groups) * t_count + t) * na];
      std::memcpy(S + (i * t_count + t) * n, o0, n * sizeof(double));
      double *ds = DS + (i * t_count + t) * n * dirs;
      for (int64_t g = 0; g < groups; g++) {
        const double *o = &out[((r * groups + g) * t_count + t) * na];
        for (int64_t k = 0; k < per; k++) {
          const int64_t dir = g * per + k;
          if (dir >= dirs) break;
          for (int64_t j = 0; j < n; j++) ds[j * dirs + dir] = failed ? 0.0 : o[n + k * n + j];
        }
      }
    }
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" {

// Register (or replace) the solver `key`: its itn_solve, its state and constant counts, and the
// quantity columns its outputs hold.
void itn_ffi_add(const char *key, void *fn, int64_t n, int64_t nc, const int64_t *cols, int64_t ncol) {
  Registry &r = registry();
  std::lock_guard<std::mutex> guard(r.lock);
  r.solvers[key] = Solver{reinterpret_cast<SolveFn>(fn), n, nc, std::vector<int64_t>(cols, cols + ncol)};
}

}  // extern "C"

XLA_FFI_DEFINE_HANDLER_SYMBOL(ItnValues, Values,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<std::string_view>("key")
                                  .Attr<double>("rtol")
                                  .Attr<double>("atol")
                                  .Attr<int64_t>("max_steps")
                                  .Attr<int64_t>("threads"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ItnSensitivities, Sensitivities,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Arg<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::F64>>()
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Attr<std::string_view>("full")
                                  .Attr<std::string_view>("split")
                                  .Attr<int64_t>("directions")
                                  .Attr<int64_t>("n")
                                  .Attr<int64_t>("nc")
                                  .Attr<double>("rtol")
                                  .Attr<double>("atol")
                                  .Attr<int64_t>("max_steps")
                                  .Attr<int64_t>("threads"));
