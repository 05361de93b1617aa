// Op self-check: a table of cases, each a few lines that call ops on given inputs and outputs.
// The harness builds the inputs once in float64, rounds them to the tested dtype, runs the case
// on the tested device and on the float64 CPU reference, and compares every output.
#include "core/selfcheck.h"

#include <cmath>
#include <functional>
#include <limits>

#include "core/ops.h"
#include "core/storage.h"

namespace sy {
namespace {

// What an argument holds: activations in the tested dtype, fp32 state, or token ids.
enum class Kind { act, f32, tokens };
// How an output starts: poisoned (must be fully written), zero (accumulates), or scratch. Parameter
// gradients are checked in GradMode::overwrite, poisoned: every element must be written.
enum class Start { poison, zero, scratch };

struct Arg {
  Shape shape;
  Kind kind = Kind::act;
  std::int32_t high = 0;  // tokens: ids in [0, high)
};
struct Out {
  Shape shape;
  Kind kind = Kind::act;
  Start start = Start::poison;
};

using CaseFn = std::function<void(const std::vector<Tensor>& in, const std::vector<Tensor>& out, StreamRef stream)>;

struct Case {
  std::string op;
  std::vector<Arg> inputs;
  std::vector<Out> outputs;
  CaseFn run;
};

std::vector<Case> make_cases() {
  std::vector<Case> cases;
  cases.push_back({"gemm", {{{37, 45}}, {{45, 29}}}, {{{37, 29}}},
                   [](auto& in, auto& out, StreamRef s) { gemm(in[0], in[1], out[0], false, false, 1.0f, 0.0f, s); }});
  cases.push_back({"gemm_batched (trans_b)", {{{3, 17, 33}}, {{3, 9, 33}}}, {{{3, 17, 9}}},
                   [](auto& in, auto& out, StreamRef s) { gemm_batched(in[0], in[1], out[0], false, true, 1.0f, 0.0f, s); }});
  cases.push_back({"embedding", {{{50}, Kind::tokens, 97}, {{97, 40}}, {{50, 40}}},
                   {{{50, 40}}, {{97, 40}, Kind::f32}}, [](auto& in, auto& out, StreamRef s) {
                     embedding_forward(in[0], in[1], out[0], s);
                     embedding_backward(in[0], in[2], out[1], GradMode::overwrite, s);  // 50 tokens: rows left out
                   }});
  cases.push_back({"rmsnorm", {{{33, 67}}, {{67}}, {{33, 67}}},
                   {{{33, 67}}, {{33}, Kind::f32}, {{33, 67}}, {{67}, Kind::f32}},
                   [](auto& in, auto& out, StreamRef s) {
                     rmsnorm_forward(in[0], in[1], out[0], out[1], 1e-5f, s);
                     rmsnorm_backward(in[0], in[1], out[1], in[2], out[2], out[3], GradMode::overwrite, s);
                   }});
  cases.push_back({"rope", {{{2, 3, 37, 16}}, {{2, 3, 37, 16}}}, {{{2, 3, 37, 16}}, {{2, 3, 37, 16}}},
                   [](auto& in, auto& out, StreamRef s) {
                     rope_forward(in[0], out[0], 10000.0f, s);
                     rope_backward(in[1], out[1], 10000.0f, s);
                   }});
  cases.push_back({"attention (GQA 6/2)",
                   {{{2, 6, 37, 32}}, {{2, 2, 37, 32}}, {{2, 2, 37, 32}}, {{2, 6, 37, 32}}},
                   {{{2, 6, 37, 32}}, {{2, 6, 37, 37}}, {{2, 6, 37, 32}}, {{2, 2, 37, 32}}, {{2, 2, 37, 32}},
                    {{2, 6, 37, 37}, Kind::act, Start::scratch}},
                   [](auto& in, auto& out, StreamRef s) {
                     attention_forward(in[0], in[1], in[2], out[0], out[1], s);
                     attention_backward(in[0], in[1], in[2], out[1], in[3], out[2], out[3], out[4], out[5], s);
                   }});
  cases.push_back({"gelu", {{{29, 51}}, {{29, 51}}}, {{{29, 51}}, {{29, 51}}}, [](auto& in, auto& out, StreamRef s) {
                     gelu_forward(in[0], out[0], s);
                     gelu_backward(in[0], in[1], out[1], s);
                   }});
  cases.push_back({"relu", {{{29, 51}}, {{29, 51}}}, {{{29, 51}}, {{29, 51}}}, [](auto& in, auto& out, StreamRef s) {
                     relu_forward(in[0], out[0], s);
                     relu_backward(in[0], in[1], out[1], s);
                   }});
  cases.push_back({"swiglu", {{{29, 2 * 51}}, {{29, 51}}}, {{{29, 51}}, {{29, 2 * 51}}},
                   [](auto& in, auto& out, StreamRef s) {
                     swiglu_forward(in[0], out[0], s);
                     swiglu_backward(in[0], in[1], out[1], s);
                   }});
  cases.push_back({"add", {{{1001}}, {{1001}}}, {{{1001}}},
                   [](auto& in, auto& out, StreamRef s) { add(in[0], in[1], out[0], s); }});
  cases.push_back({"cast to f32", {{{1001}}}, {{{1001}, Kind::f32}},
                   [](auto& in, auto& out, StreamRef s) { cast(in[0], out[0], s); }});
  cases.push_back({"cross_entropy", {{{7, 1000}}, {{7}, Kind::tokens, 1000}},
                   {{{7}, Kind::f32}, {{7}, Kind::f32}, {{7, 1000}}}, [](auto& in, auto& out, StreamRef s) {
                     cross_entropy_forward(in[0], in[1], out[0], out[1], -100, s);
                     cross_entropy_backward(in[0], in[1], out[1], out[2], 1.0f / 7, -100, s);
                   }});
  cases.push_back({"adamw (f32 master)",
                   {{{999}, Kind::f32}, {{999}, Kind::f32}, {{999}, Kind::f32}},
                   {{{999}, Kind::f32}, {{999}, Kind::f32}, {{999}, Kind::f32}, {{999}, Kind::f32}},
                   [](auto& in, auto& out, StreamRef s) {
                     // Updates in place: params and m start as the inputs; v must be positive,
                     // so it is drawn uniform (bit-identical on every device).
                     copy(out[0], in[0], s);
                     copy(out[1], in[2], s);
                     fill_uniform(out[2], RngKey{7, std::uint32_t(RngPurpose::test), 0}, 0.01f, 1.0f, 0, s);
                     AdamWParams hp;
                     hp.lr = 1e-2f;
                     hp.weight_decay = 0.1f;
                     hp.step = 3;
                     adamw_update(out[0], in[1], out[1], out[2], out[3], hp, s);
                   }});
  cases.push_back({"sum_squares", {{{100003}}}, {{{1}, Kind::f32, Start::zero}},
                   [](auto& in, auto& out, StreamRef s) { sum_squares(in[0], out[0], s); }});
  return cases;
}

DType dtype_for(Kind kind, DType act) {
  switch (kind) {
    case Kind::act: return act;
    case Kind::f32: return DType::f32;
    case Kind::tokens: return DType::i32;
  }
  return act;
}

// Inputs for one case: float64 normals on the CPU (or token ids), one key per argument.
std::vector<OwnedTensor> make_inputs(const Case& c, std::uint64_t seed) {
  std::vector<OwnedTensor> inputs;
  for (std::size_t i = 0; i < c.inputs.size(); ++i) {
    const Arg& arg = c.inputs[i];
    const RngKey key{seed, std::uint32_t(RngPurpose::test), std::uint32_t(i)};
    if (arg.kind == Kind::tokens) {
      OwnedTensor t(arg.shape, DType::i32, Device::cpu);
      std::int32_t* p = t.view().ptr<std::int32_t>();
      for (std::int64_t j = 0; j < t.view().numel(); ++j) p[j] = std::int32_t(philox4x32(key, std::uint64_t(j)).v[0] % std::uint32_t(arg.high));
      inputs.push_back(std::move(t));
    } else {
      OwnedTensor t(arg.shape, DType::f64, Device::cpu);
      fill_normal(t, key, 0.0f, 1.0f);
      inputs.push_back(std::move(t));
    }
  }
  return inputs;
}

// `src` (CPU) converted to dtype and moved to device.
OwnedTensor place(const Tensor& src, DType dtype, Device device) {
  OwnedTensor host(src.shape(), dtype, Device::cpu);
  if (dtype == src.dtype()) {
    copy(host, src);
  } else {
    cast(src, host);
  }
  if (device == Device::cpu) return host;
  OwnedTensor out(src.shape(), dtype, device);
  copy(out, host);
  return out;
}

std::vector<double> read_back(const Tensor& t) {
  OwnedTensor host(t.shape(), DType::f64, Device::cpu);
  OwnedTensor staged = place(t, t.dtype(), Device::cpu);
  cast(staged, host);
  const double* p = host.view().ptr<double>();
  return std::vector<double>(p, p + host.view().numel());
}

double relative_error(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) return std::numeric_limits<double>::infinity();  // an unwritten (poisoned) element
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

// Runs the case once with activations in `act` on `device`; returns the outputs.
std::vector<OwnedTensor> run_case(const Case& c, const std::vector<OwnedTensor>& inputs, DType act, Device device,
                                  StreamRef stream) {
  std::vector<OwnedTensor> in_owned, out_owned;
  std::vector<Tensor> in, out;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& src = inputs[i];
    in_owned.push_back(src.dtype() == DType::i32 ? place(src, DType::i32, device)
                                                 : place(src, dtype_for(c.inputs[i].kind, act), device));
    in.push_back(in_owned.back());
  }
  for (const Out& o : c.outputs) {
    out_owned.emplace_back(o.shape, dtype_for(o.kind, act), device);
    fill_bytes(out_owned.back(), o.start == Start::zero ? 0 : 0xff, stream);  // 0xff bytes are NaN
    out.push_back(out_owned.back());
  }
  c.run(in, out, stream);
  synchronize(stream);
  return out_owned;
}

}  // namespace

std::vector<SelfCheckResult> run_selfcheck(std::uint64_t seed) {
  struct Target {
    Device device;
    DType dtype;
    double tolerance;  // f32 differs from f64 by rounding and summation order; bf16 keeps 8 bits
  };
  std::vector<Target> targets{{Device::cpu, DType::f32, 1e-5}};
  if (cuda_device_count() > 0) {
    targets.push_back({Device::cuda, DType::f32, 1e-5});
    targets.push_back({Device::cuda, DType::bf16, 2e-2});
  }
  Stream stream = cuda_device_count() > 0 ? Stream::create() : Stream();
  std::vector<SelfCheckResult> results;
  for (const Case& c : make_cases()) {
    const std::vector<OwnedTensor> inputs = make_inputs(c, seed);
    // The reference sees the inputs rounded as the tested dtype sees them, so each target is
    // compared with a float64 run on its own rounded inputs.
    for (const Target& target : targets) {
      std::vector<OwnedTensor> rounded;
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        const Tensor& src = inputs[i];
        if (src.dtype() == DType::i32) {
          rounded.push_back(place(src, DType::i32, Device::cpu));
        } else {
          OwnedTensor r = place(src, dtype_for(c.inputs[i].kind, target.dtype), Device::cpu);
          rounded.push_back(place(r, DType::f64, Device::cpu));
        }
      }
      const std::vector<OwnedTensor> want = run_case(c, rounded, DType::f64, Device::cpu, {});
      const std::vector<OwnedTensor> got = run_case(c, rounded, target.dtype, target.device, stream);
      double worst = 0;
      for (std::size_t o = 0; o < c.outputs.size(); ++o) {
        if (c.outputs[o].start == Start::scratch) continue;
        worst = std::max(worst, relative_error(read_back(got[o]), read_back(want[o])));
      }
      results.push_back({c.op, target.device, target.dtype, worst, target.tolerance, worst <= target.tolerance});
    }
  }
  return results;
}

}  // namespace sy
