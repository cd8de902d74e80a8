#pragma once
// Which instruction set the CPU kernels run with. A portable build (the default, LONGATTN_ARCH=portable)
// holds the kernels for AVX-512, AVX2 and SSE2 and picks, at the first kernel call, the best one the CPU
// runs, or the one the environment variable LONGATTN_CPU_ISA names (auto, avx512-amx, avx512-bf16, avx512, avx2, sse2). A build
// for one machine (LONGATTN_ARCH=native or another -march value) holds one set, named "native"; on
// another architecture than x86-64 a portable build holds one, "generic".
#include <string>
#include <vector>

namespace longattn {

// The instruction set of the kernels in use.
std::string cpu_isa();

// Those this build holds that this CPU runs, best first.
std::vector<std::string> cpu_isas();

// Switches the kernels of every later call, in every thread: "auto" (the best this CPU runs) or one of
// cpu_isas(); anything else throws longattn::Error naming the choices. Not while a kernel runs.
void set_cpu_isa(const std::string& name);

}  // namespace longattn
