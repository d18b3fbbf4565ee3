// accel_lib's fused device quantizers, formats.py's specifications as ONNX Runtime custom operators: block floating
// point (accel_lib.device::BfpQuantize) and the OCP MX formats (accel_lib.device::MxQuantize). One read and one
// write of the tensor instead of the passes of the pure-ONNX subgraph; bit for bit the same results (tests compare
// against formats.quantize).
//
// BfpQuantize attributes: axis (the blocked axis), block (values per shared exponent), mantissa_bits, emin, emax.
// MxQuantize attributes: axis, block, exponent_bits (0: an integer element), mantissa_bits, emin, emax (of the
// element type) and max_norm (its largest magnitude).
// Built by `python -m accel_lib.fpga.device.kernel build` against ONNX Runtime's public C/C++ API headers.
#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

namespace {

constexpr int64_t kChunk = 512;   // positions along the inner axis handled by one task

// Where the blocks lie in a tensor: [outer, channels, inner] around the blocked axis, split into tasks of one
// block of channels at up to kChunk inner positions of one outer index.
struct Layout {
  const float* x;
  float* y;
  int64_t outer, channels, inner, block, nblocks, nchunks;
};

// One task's share: its first input and output values, its channel and position counts, and per position the
// block maximum of |x| and whether the block holds a NaN or an infinity (step 1 of both specifications).
struct Share {
  const float* xb;
  float* yb;
  int64_t np, nc;
  float m[kChunk];
  int bad[kChunk];

  Share(const Layout& j, size_t task) {
    int64_t t = static_cast<int64_t>(task);
    const int64_t chunk = t % j.nchunks;
    t /= j.nchunks;
    const int64_t blk = t % j.nblocks;
    const int64_t o = t / j.nblocks;
    const int64_t p0 = chunk * kChunk, c0 = blk * j.block;
    np = std::min(kChunk, j.inner - p0);
    nc = std::min(j.block, j.channels - c0);
    xb = j.x + (o * j.channels + c0) * j.inner + p0;
    yb = j.y + (o * j.channels + c0) * j.inner + p0;
    for (int64_t p = 0; p < np; ++p) { m[p] = 0.0f; bad[p] = 0; }
    for (int64_t c = 0; c < nc; ++c) {
      const float* row = xb + c * j.inner;
      for (int64_t p = 0; p < np; ++p) {
        const float a = std::fabs(row[p]);
        bad[p] |= !(a <= FLT_MAX);
        m[p] = a > m[p] ? a : m[p];
      }
    }
  }

  // A block that held a NaN or an infinity becomes NaN, every value of it.
  void poison(const Layout& j) {
    for (int64_t p = 0; p < np; ++p) {
      if (bad[p]) {
        for (int64_t c = 0; c < nc; ++c) yb[c * j.inner + p] = NAN;
      }
    }
  }
};

// Lay out the kernel's input and output around ``axis`` and run ``task`` over every share of ``job``.
template <class Job>
void run(OrtKernelContext* context, int64_t axis, int64_t block, Job& job, void (*task)(void*, size_t),
         const char* op) {
  Ort::KernelContext ctx(context);
  Ort::ConstValue in = ctx.GetInput(0);
  const std::vector<int64_t> shape = in.GetTensorTypeAndShapeInfo().GetShape();
  const int64_t rank = static_cast<int64_t>(shape.size());
  const int64_t ax = axis < 0 ? axis + rank : axis;
  if (ax < 0 || ax >= rank) throw std::invalid_argument(std::string(op) + ": axis out of range for the input's rank");
  Layout& j = job.at;
  j.outer = 1;
  j.inner = 1;
  for (int64_t i = 0; i < ax; ++i) j.outer *= shape[i];
  for (int64_t i = ax + 1; i < rank; ++i) j.inner *= shape[i];
  j.channels = shape[ax];
  j.block = block;
  j.nblocks = (j.channels + block - 1) / block;
  j.nchunks = (j.inner + kChunk - 1) / kChunk;
  j.x = in.GetTensorData<float>();
  Ort::UnownedValue out = ctx.GetOutput(0, shape);
  j.y = out.GetTensorMutableData<float>();
  const int64_t tasks = j.outer * j.nblocks * j.nchunks;
  if (tasks == 0 || j.channels == 0) return;
  if (tasks == 1) {
    task(&job, 0);
  } else {
    ctx.ParallelFor(task, static_cast<size_t>(tasks), 0, &job);
  }
}

// -- BfpQuantize ------------------------------------------------------------------------------------------
struct BfpJob {
  Layout at;
  int mbits, emin, emax;
};

void bfp_task(void* data, size_t task) {
  const BfpJob& job = *static_cast<const BfpJob*>(data);
  const Layout& j = job.at;
  Share sh(j, task);
  float step[kChunk], inv[kChunk];
  // 2-3. shared exponent floor(log2 M) clamped to [emin, emax]; step 2**(E - m + 1)
  bool exact_inverse = true;
  for (int64_t p = 0; p < sh.np; ++p) {
    int e2 = 0;
    std::frexp(sh.bad[p] ? 1.0f : sh.m[p], &e2);     // M = f * 2**e2, f in [0.5, 1): floor(log2 M) = e2 - 1
    int e = e2 - 1;
    e = e < job.emin ? job.emin : (e > job.emax ? job.emax : e);
    const int s = e - job.mbits + 1;
    step[p] = std::ldexp(1.0f, s);
    inv[p] = std::ldexp(1.0f, -s);
    exact_inverse &= (-s <= 127 && -s >= -149);      // 2**-s representable: x * inv == x / step exactly
  }
  const float kmax = std::ldexp(1.0f, job.mbits) - 1.0f;
  // 3-5. k = min(floor(|x| / step + 1/2), kmax) (ties away from zero), y = sign(x) * k * step, zeros +0.0
  for (int64_t c = 0; c < sh.nc; ++c) {
    const float* row = sh.xb + c * j.inner;
    float* out = sh.yb + c * j.inner;
    for (int64_t p = 0; p < sh.np; ++p) {
      const float v = row[p];
      float t2 = (exact_inverse ? std::fabs(v) * inv[p] : std::fabs(v) / step[p]) + 0.5f;
      t2 = t2 < kmax ? t2 : kmax;                         // min before floor: the same for an integer kmax
      const float k = static_cast<float>(static_cast<int32_t>(t2));   // t2 >= 0: truncation is floor
      out[p] = std::copysign(k * step[p], v) + 0.0f;      // -0.0 + 0.0 == +0.0
    }
  }
  sh.poison(j);
}

struct BfpKernel {
  int64_t axis, block;
  int mbits, emin, emax;

  BfpKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    axis = ki.GetAttribute<int64_t>("axis");
    block = ki.GetAttribute<int64_t>("block");
    mbits = static_cast<int>(ki.GetAttribute<int64_t>("mantissa_bits"));
    emin = static_cast<int>(ki.GetAttribute<int64_t>("emin"));
    emax = static_cast<int>(ki.GetAttribute<int64_t>("emax"));
    // every step 2**(E - m + 1) must be a float32 power of two
    if (block < 1 || mbits < 1 || mbits > 23 || emin > emax || emin - mbits + 1 < -149 || emax - mbits + 1 > 127)
      throw std::invalid_argument("BfpQuantize: attributes out of range (block >= 1, 1 <= mantissa_bits <= 23, "
                                  "emin <= emax, 2**(emin - mantissa_bits + 1) and 2**(emax - mantissa_bits + 1) "
                                  "float32 numbers)");
  }

  void Compute(OrtKernelContext* context) {
    BfpJob job{};
    job.mbits = mbits;
    job.emin = emin;
    job.emax = emax;
    run(context, axis, block, job, bfp_task, "BfpQuantize");
  }
};

// -- MxQuantize -------------------------------------------------------------------------------------------
// 2**k for k in [-126, 127], built from its bits (k outside: a harmless wrong value, used only in NaN blocks)
inline float pow2(int k) {
  const uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct MxJob {
  Layout at;
  int ebits, mbits, emin, emax;
  float max_norm;
};

void mx_task(void* data, size_t task) {
  const MxJob& job = *static_cast<const MxJob*>(data);
  const Layout& j = job.at;
  Share sh(j, task);
  float scale[kChunk], inv[kChunk];
  // 2. shared exponent S = floor(log2 M) - emax, clamped to [-127, 127] (an all-zero block: -127)
  for (int64_t p = 0; p < sh.np; ++p) {
    int s = -127;
    if (!sh.bad[p] && sh.m[p] > 0.0f) {
      int e2 = 0;
      std::frexp(sh.m[p], &e2);
      s = std::clamp(e2 - 1 - job.emax, -127, 127);
    }
    scale[p] = std::ldexp(1.0f, s);       // 2**-127 is a float32 subnormal: still exact
    inv[p] = std::ldexp(1.0f, -s);        // 2**127 at most: x * inv == x / scale, correctly rounded alike
  }
  const float lo = -job.max_norm, hi = job.max_norm;
  const float istep = std::ldexp(1.0f, job.mbits - job.emin), step = std::ldexp(1.0f, job.emin - job.mbits);
  // 3-5. each v = x / 2**S rounded half to even at its own exponent's step (an integer's: fixed), saturated
  for (int64_t c = 0; c < sh.nc; ++c) {
    const float* row = sh.xb + c * j.inner;
    float* out = sh.yb + c * j.inner;
    for (int64_t p = 0; p < sh.np; ++p) {
      const float v = row[p] * inv[p];
      float q;
      if (job.ebits) {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        const int e = std::max(static_cast<int>((bits >> 23) & 0xFF) - 127, job.emin);   // subnormal: below emin
        q = std::nearbyint(v * pow2(job.mbits - e)) * pow2(e - job.mbits);     // both exact: powers of two
      } else {
        q = std::nearbyint(v * istep) * step + 0.0f;   // -0.0 + 0.0 == +0.0: an integer's zero has no sign
      }
      q = q < lo ? lo : (q > hi ? hi : q);
      out[p] = q * scale[p];
    }
  }
  sh.poison(j);
}

struct MxKernel {
  int64_t axis, block;
  int ebits, mbits, emin, emax;
  float max_norm;

  MxKernel(const OrtApi&, const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    axis = ki.GetAttribute<int64_t>("axis");
    block = ki.GetAttribute<int64_t>("block");
    ebits = static_cast<int>(ki.GetAttribute<int64_t>("exponent_bits"));
    mbits = static_cast<int>(ki.GetAttribute<int64_t>("mantissa_bits"));
    emin = static_cast<int>(ki.GetAttribute<int64_t>("emin"));
    emax = static_cast<int>(ki.GetAttribute<int64_t>("emax"));
    max_norm = ki.GetAttribute<float>("max_norm");
    if (block < 1 || ebits < 0 || ebits > 8 || mbits < 1 || mbits > 23 || emin > emax + 1 || emax > 127 ||
        emin < -126 || !(max_norm > 0.0f && max_norm <= FLT_MAX))
      throw std::invalid_argument("MxQuantize: attributes out of range (block >= 1, 0 <= exponent_bits <= 8, "
                                  "1 <= mantissa_bits <= 23, -126 <= emin <= emax + 1, emax <= 127, "
                                  "0 < max_norm <= FLT_MAX)");
  }

  void Compute(OrtKernelContext* context) {
    MxJob job{};
    job.ebits = ebits;
    job.mbits = mbits;
    job.emin = emin;
    job.emax = emax;
    job.max_norm = max_norm;
    run(context, axis, block, job, mx_task, "MxQuantize");
  }
};

// Shape inference: the output's type and shape are the input's, symbolic dimensions included. Known shapes let ONNX
// Runtime prove a residual Add's operands alike and fuse the Add and ReLU into the convolution before them; without
// them they run on their own. (Set through the C API: the C++ wrapper's SetOutputShape drops symbolic dimensions.)
// A dimension the input does not know, and does not name, comes as -1, which set as it is would read as a size of -1
// (a Gemm after a flattened input then refuses to unify it with its weights' 25088): such a one gets a name of its
// own, unknown as before.
std::atomic<uint64_t> unnamed_dims{0};

OrtStatusPtr ORT_API_CALL same_shape(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi& api = Ort::GetApi();
  OrtTensorTypeAndShapeInfo* in = nullptr;      // owned by the context
  if (OrtStatusPtr status = api.ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) return status;
  size_t rank = 0;
  if (OrtStatusPtr status = api.GetDimensionsCount(in, &rank)) return status;
  std::vector<int64_t> dims(rank);
  std::vector<const char*> symbols(rank, nullptr);
  if (OrtStatusPtr status = api.GetDimensions(in, dims.data(), rank)) return status;
  if (OrtStatusPtr status = api.GetSymbolicDimensions(in, symbols.data(), rank)) return status;
  std::vector<std::string> names(rank);
  bool unnamed = false;
  for (size_t i = 0; i < rank; ++i) {
    names[i] = symbols[i] ? symbols[i] : "";
    if (dims[i] < 0 && names[i].empty()) {
      names[i] = "accel_lib_unknown_" + std::to_string(unnamed_dims++);
      unnamed = true;
    }
  }
  if (!unnamed) return api.ShapeInferContext_SetOutputTypeShape(ctx, 0, in);
  OrtTensorTypeAndShapeInfo* out = nullptr;
  if (OrtStatusPtr status = api.CreateTensorTypeAndShapeInfo(&out)) return status;
  std::vector<const char*> named(rank);
  for (size_t i = 0; i < rank; ++i) named[i] = names[i].c_str();
  OrtStatusPtr status = api.SetTensorElementType(out, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT);
  if (!status) status = api.SetDimensions(out, dims.data(), rank);
  if (!status) status = api.SetSymbolicDimensions(out, named.data(), rank);
  if (!status) status = api.ShapeInferContext_SetOutputTypeShape(ctx, 0, out);
  api.ReleaseTensorTypeAndShapeInfo(out);
  return status;
}

template <class Op, class Kernel, const char* Name>
struct CpuOp : Ort::CustomOpBase<Op, Kernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new Kernel(api, info); }
  const char* GetName() const { return Name; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  CpuOp() { OrtCustomOp::InferOutputShapeFn = same_shape; }
};

constexpr char kBfpName[] = "BfpQuantize";
constexpr char kMxName[] = "MxQuantize";
struct BfpOp : CpuOp<BfpOp, BfpKernel, kBfpName> {};
struct MxOp : CpuOp<MxOp, MxKernel, kMxName> {};

const BfpOp kOp;
const MxOp kMxOp;
std::mutex domains_mutex;
std::vector<Ort::CustomOpDomain>* domains = new std::vector<Ort::CustomOpDomain>();   // outlive every session

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  const OrtApi* api = api_base->GetApi(17);       // ParallelFor is in API 17 (ONNX Runtime 1.17) and later
  if (api == nullptr) return nullptr;
  Ort::InitApi(api);
  try {
    Ort::CustomOpDomain domain{"accel_lib.device"};
    domain.Add(&kOp);
    domain.Add(&kMxOp);
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(domains_mutex);
    domains->push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
  return nullptr;
}
