#pragma once
// The block kernel contract's argument checks, shared by the CPU kernels (kernels/cpu/validate.cpp) and
// the CUDA kernels (kernels/cuda/validate_cuda.cpp), which add what only they require. Each throws
// longattn::Error naming the bad field. `device` is where the calling kernels run; CUDA views also keep
// every extent below 2^31.
#include <cstdint>
#include <string>

#include "kernels/attention.hpp"

namespace longattn::kernels::checks {

void view(const TensorView& t, const std::string& name, Device device);
void same_shape(const TensorView& t, const std::string& name, const TensorView& ref, const char* ref_name);
// Q [B, Sq, Hq, D], K and V [B, Sk, Hkv, D], positions, pattern and ALiBi slopes.
void qkv(const TensorView& q, const TensorView& k, const TensorView& v, const std::int64_t* q_pos,
         const std::int64_t* k_pos, const Pattern* pattern, std::int64_t head_offset, Device device);
// Everything of FwdParams / BwdParams but the storage types of q, k, v, o and dout.
void forward(const FwdParams& p, Device device);
void backward(const BwdParams& p, Device device);

}  // namespace longattn::kernels::checks
