// The CPU kernels' entry points (kernels/attention.hpp, kernels/cpu/baseline.hpp): each calls the
// compilation of the kernels for the instruction set in use (kernels/cpu/isa_target.hpp), chosen once,
// at the first call, from the CPU (cpuid, through the compiler's __builtin_cpu_supports) or from
// LONGATTN_CPU_ISA.
#include <atomic>
#include <cstdlib>
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#include <mutex>
#include <string>
#include <vector>

#include "kernels/attention.hpp"
#include "kernels/cpu/baseline.hpp"
#include "longattn/cpu_isa.hpp"
#include "longattn/error.hpp"

// What each compilation defines (kernels/cpu/flash_fwd.cpp, flash_bwd.cpp, decode.cpp, baseline.cpp).
#define LONGATTN_DECLARE_ISA(isa)                                              \
    namespace longattn::kernels::cpu::isa {                                    \
    void flash_forward(const FwdParams& p);                                    \
    void flash_backward(const BwdParams& p);                                   \
    void unfused_forward(const FwdParams& p);                                  \
    void decode(const DecodeParams& p);                                        \
    double fma_peak();                                                         \
    }
#if LONGATTN_CPU_ISA_PORTABLE_X86
LONGATTN_DECLARE_ISA(avx512)
#if !defined(__clang__)
#define LONGATTN_WITH_AMX 1
namespace longattn::kernels::cpu::avx512 {
void flash_forward_amx(const FwdParams& p);   // AMX tiles where q, k and v are bf16 (flash_fwd.cpp)
void flash_forward_bf16(const FwdParams& p);  // AVX512-BF16 scores where q and k are bf16
void flash_backward_bf16(const BwdParams& p);  // AVX512-BF16 S and dP where q, k, v, o and dout are bf16
}
#endif
LONGATTN_DECLARE_ISA(avx2)
LONGATTN_DECLARE_ISA(sse2)
#elif LONGATTN_CPU_ISA_PORTABLE
LONGATTN_DECLARE_ISA(generic)
#else
LONGATTN_DECLARE_ISA(native)
#endif

#if !defined(LONGATTN_WITH_AMX)
#define LONGATTN_WITH_AMX 0
#endif

namespace longattn {
namespace {

struct Isa {
    const char* name;
    bool (*runs_here)();
    void (*forward)(const kernels::FwdParams&);
    void (*backward)(const kernels::BwdParams&);
    void (*unfused)(const kernels::FwdParams&);
    void (*decode)(const kernels::DecodeParams&);
    double (*peak)();
};

#define LONGATTN_ISA_ENTRY(isa, test)                                                                      \
    Isa {                                                                                                 \
        #isa, test, kernels::cpu::isa::flash_forward, kernels::cpu::isa::flash_backward,                   \
            kernels::cpu::isa::unfused_forward, kernels::cpu::isa::decode, kernels::cpu::isa::fma_peak     \
    }

#if LONGATTN_WITH_AMX
// AMX-BF16 with AVX512-BF16, and the kernel's permission for this process to use the tile registers
// (Linux asks for it once: ARCH_REQ_XCOMP_PERM for XTILEDATA).
bool amx_runs_here() {
    static const bool ok = [] {
#if defined(__linux__)
        if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16") ||
            !__builtin_cpu_supports("avx512bf16"))
            return false;
        constexpr long kReqXcompPerm = 0x1023, kXtileData = 18;
        return syscall(SYS_arch_prctl, kReqXcompPerm, kXtileData) == 0;
#else
        return false;
#endif
    }();
    return ok;
}
#endif

// __builtin_cpu_supports also checks that the operating system saves the wider registers.
#if LONGATTN_CPU_ISA_PORTABLE_X86
bool avx512_runs_here() {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi2");
}
#endif

// Best first.
const Isa kIsas[] = {
#if LONGATTN_CPU_ISA_PORTABLE_X86
#if LONGATTN_WITH_AMX
    // The AVX-512 kernels, with the forward's tile products on AMX for bf16 q, k and v, and the
    // backward's S and dP by AVX512-BF16 dot products for bf16 inputs.
    Isa{"avx512-amx", [] { return avx512_runs_here() && amx_runs_here(); }, kernels::cpu::avx512::flash_forward_amx,
        kernels::cpu::avx512::flash_backward_bf16, kernels::cpu::avx512::unfused_forward, kernels::cpu::avx512::decode,
        kernels::cpu::avx512::fma_peak},
    // The AVX-512 kernels, with the products of two bf16 operands (the forward's S, the backward's S and
    // dP) by AVX512-BF16 dot products.
    Isa{"avx512-bf16", [] { return avx512_runs_here() && __builtin_cpu_supports("avx512bf16"); },
        kernels::cpu::avx512::flash_forward_bf16, kernels::cpu::avx512::flash_backward_bf16,
        kernels::cpu::avx512::unfused_forward, kernels::cpu::avx512::decode, kernels::cpu::avx512::fma_peak},
#endif
    LONGATTN_ISA_ENTRY(avx512, avx512_runs_here),
    LONGATTN_ISA_ENTRY(avx2,
                       [] {
                           return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                                  __builtin_cpu_supports("f16c") && __builtin_cpu_supports("bmi2");
                       }),
    LONGATTN_ISA_ENTRY(sse2, [] { return true; }),
#elif LONGATTN_CPU_ISA_PORTABLE
    LONGATTN_ISA_ENTRY(generic, [] { return true; }),
#else
    LONGATTN_ISA_ENTRY(native, [] { return true; }),
#endif
};

std::vector<const Isa*> runnable() {
    std::vector<const Isa*> out;
    for (const Isa& i : kIsas)
        if (i.runs_here()) out.push_back(&i);
    return out;
}

std::string choices(const char* what) {
    std::string s = std::string(what) + ": one of auto";
    for (const Isa* i : runnable()) s.append(", ").append(i->name);
    return s + " (the instruction sets of this build that this CPU runs)";
}

const Isa* find(const std::string& name, const char* what) {
    if (name == "auto" || name.empty()) return runnable().front();
    for (const Isa* i : runnable())
        if (name == i->name) return i;
    throw Error(choices(what) + ", got '" + name + "'");
}

std::atomic<const Isa*> g_active{nullptr};
std::mutex g_choose;

const Isa& active() {
    const Isa* a = g_active.load(std::memory_order_acquire);
    if (a) return *a;
    const std::lock_guard<std::mutex> lock(g_choose);
    a = g_active.load(std::memory_order_relaxed);
    if (!a) {
        const char* env = std::getenv("LONGATTN_CPU_ISA");
        a = find(env ? env : "auto", "LONGATTN_CPU_ISA");
        g_active.store(a, std::memory_order_release);
    }
    return *a;
}

}  // namespace

std::string cpu_isa() { return active().name; }

std::vector<std::string> cpu_isas() {
    std::vector<std::string> out;
    for (const Isa* i : runnable()) out.emplace_back(i->name);
    return out;
}

void set_cpu_isa(const std::string& name) { g_active.store(find(name, "cpu isa"), std::memory_order_release); }

namespace kernels {

void flash_forward_cpu(const FwdParams& p) { active().forward(p); }
void flash_backward_cpu(const BwdParams& p) { active().backward(p); }
void unfused_forward_cpu(const FwdParams& p) { active().unfused(p); }
void decode_cpu(const DecodeParams& p) {
    validate(p);
    active().decode(p);
}
double measure_fma_peak() { return active().peak(); }

}  // namespace kernels
}  // namespace longattn
