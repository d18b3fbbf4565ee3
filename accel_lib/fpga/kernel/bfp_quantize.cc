// accel_lib's fused device quantizer: block floating point (formats.py's specification) as one ONNX Runtime
// custom operator, accel_lib.device::BfpQuantize. One read and one write of the tensor instead of the ~7 passes
// of the pure-ONNX subgraph; bit for bit the same results (tests compare against formats.quantize).
//
// Attributes: axis (the blocked axis), block (values per shared exponent), mantissa_bits, emin, emax.
// Built by `python -m accel_lib.fpga.kernel build` against ONNX Runtime's public C/C++ API headers.
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

struct Job {
  const float* x;
  float* y;
  int64_t outer, channels, inner, block, nblocks, nchunks;
  int mbits, emin, emax;
};

// One task: one block of channels at up to kChunk inner positions of one outer index.
void quantize_task(void* data, size_t task) {
  const Job& j = *static_cast<const Job*>(data);
  int64_t t = static_cast<int64_t>(task);
  const int64_t chunk = t % j.nchunks;
  t /= j.nchunks;
  const int64_t blk = t % j.nblocks;
  const int64_t o = t / j.nblocks;
  const int64_t p0 = chunk * kChunk;
  const int64_t np = std::min(kChunk, j.inner - p0);
  const int64_t c0 = blk * j.block;
  const int64_t nc = std::min(j.block, j.channels - c0);
  const float* xb = j.x + (o * j.channels + c0) * j.inner + p0;
  float* yb = j.y + (o * j.channels + c0) * j.inner + p0;

  float m[kChunk], step[kChunk], inv[kChunk];
  int bad[kChunk];
  for (int64_t p = 0; p < np; ++p) { m[p] = 0.0f; bad[p] = 0; }
  // 1. block maximum of |x|, and whether the block holds a NaN or an infinity
  for (int64_t c = 0; c < nc; ++c) {
    const float* row = xb + c * j.inner;
    for (int64_t p = 0; p < np; ++p) {
      const float a = std::fabs(row[p]);
      bad[p] |= !(a <= FLT_MAX);
      m[p] = a > m[p] ? a : m[p];
    }
  }
  // 2-3. shared exponent floor(log2 M) clamped to [emin, emax]; step 2**(E - m + 1)
  bool exact_inverse = true;
  for (int64_t p = 0; p < np; ++p) {
    int e2 = 0;
    std::frexp(bad[p] ? 1.0f : m[p], &e2);          // M = f * 2**e2, f in [0.5, 1): floor(log2 M) = e2 - 1
    int e = e2 - 1;
    e = e < j.emin ? j.emin : (e > j.emax ? j.emax : e);
    const int s = e - j.mbits + 1;
    step[p] = std::ldexp(1.0f, s);
    inv[p] = std::ldexp(1.0f, -s);
    exact_inverse &= (-s <= 127 && -s >= -149);      // 2**-s representable: x * inv == x / step exactly
  }
  const float kmax = std::ldexp(1.0f, j.mbits) - 1.0f;
  // 3-5. k = min(floor(|x| / step + 1/2), kmax) (ties away from zero), y = sign(x) * k * step, zeros +0.0
  for (int64_t c = 0; c < nc; ++c) {
    const float* row = xb + c * j.inner;
    float* out = yb + c * j.inner;
    if (exact_inverse) {
      for (int64_t p = 0; p < np; ++p) {
        const float v = row[p];
        float t2 = std::fabs(v) * inv[p] + 0.5f;
        t2 = t2 < kmax ? t2 : kmax;                       // min before floor: the same for an integer kmax
        const float k = static_cast<float>(static_cast<int32_t>(t2));   // t2 >= 0: truncation is floor
        out[p] = std::copysign(k * step[p], v) + 0.0f;    // -0.0 + 0.0 == +0.0
      }
    } else {
      for (int64_t p = 0; p < np; ++p) {
        const float v = row[p];
        float t2 = std::fabs(v) / step[p] + 0.5f;
        t2 = t2 < kmax ? t2 : kmax;
        const float k = static_cast<float>(static_cast<int32_t>(t2));
        out[p] = std::copysign(k * step[p], v) + 0.0f;
      }
    }
  }
  for (int64_t p = 0; p < np; ++p) {
    if (bad[p]) {
      for (int64_t c = 0; c < nc; ++c) yb[c * j.inner + p] = NAN;
    }
  }
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
    Ort::KernelContext ctx(context);
    Ort::ConstValue in = ctx.GetInput(0);
    const std::vector<int64_t> shape = in.GetTensorTypeAndShapeInfo().GetShape();
    const int64_t rank = static_cast<int64_t>(shape.size());
    const int64_t ax = axis < 0 ? axis + rank : axis;
    if (ax < 0 || ax >= rank) throw std::invalid_argument("BfpQuantize: axis out of range for the input's rank");
    Job j{};
    j.outer = 1;
    j.inner = 1;
    for (int64_t i = 0; i < ax; ++i) j.outer *= shape[i];
    for (int64_t i = ax + 1; i < rank; ++i) j.inner *= shape[i];
    j.channels = shape[ax];
    j.block = block;
    j.nblocks = (j.channels + block - 1) / block;
    j.nchunks = (j.inner + kChunk - 1) / kChunk;
    j.mbits = mbits;
    j.emin = emin;
    j.emax = emax;
    j.x = in.GetTensorData<float>();
    Ort::UnownedValue out = ctx.GetOutput(0, shape);
    j.y = out.GetTensorMutableData<float>();
    const int64_t tasks = j.outer * j.nblocks * j.nchunks;
    if (tasks == 0 || j.channels == 0) return;
    if (tasks == 1) {
      quantize_task(&j, 0);
    } else {
      ctx.ParallelFor(quantize_task, static_cast<size_t>(tasks), 0, &j);
    }
  }
};

struct BfpOp : Ort::CustomOpBase<BfpOp, BfpKernel> {
  void* CreateKernel(const OrtApi& api, const OrtKernelInfo* info) const { return new BfpKernel(api, info); }
  const char* GetName() const { return "BfpQuantize"; }
  const char* GetExecutionProviderType() const { return "CPUExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }
};

const BfpOp kOp;
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
    Ort::UnownedSessionOptions(options).Add(domain);
    std::lock_guard<std::mutex> lock(domains_mutex);
    domains->push_back(std::move(domain));
  } catch (const Ort::Exception& e) {
    return api->CreateStatus(e.GetOrtErrorCode(), e.what());
  }
  return nullptr;
}
