// Prints FlashAttention's rule for the CPU kernels at sharp softmax: for each score standard
// deviation and storage type, over every pattern family with GQA 4:1 (D = 32, 131 tokens), the
// worst ratio max|kernel - fp64| / max|plain - fp64| of O, LSE, dQ, dK, dV (the forward kernel's
// output feeding the backward kernel; plain = the unfused same-precision implementation), and how many
// cases break the rule (factor 2 forward, 3 gradients, plus the floor).
//
//   ./build/tests/precision_report [threads]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "testing.hpp"

using namespace longattn;
using namespace longattn::test;

int main(int argc, char** argv) {
    const int threads = argc > 1 ? std::atoi(argv[1]) : 0;
    std::printf("%-9s %-5s %9s %9s %9s %9s %9s  %s\n", "score_std", "dtype", "O", "LSE", "dQ", "dK", "dV",
                "cases breaking the rule");
    int broken_total = 0;
    for (double sd : {1.0, 4.0, 16.0, 64.0})
        for (DType t : {DType::f32, DType::bf16}) {
            double worst[kChainOuts] = {};
            std::string broken;
            int nbroken = 0;
            for (const auto& z : pattern_zoo(131, 8)) {
                const ChainErrors e = chain_errors(Problem(sharp_case({z, sd, t}, 131, 32)), cpu_runners(threads));
                bool ok = true;
                for (int o = 0; o < kChainOuts; ++o) {
                    const double r = e.plain[o] > 0 ? e.kernel[o] / e.plain[o] : (e.kernel[o] > 0 ? 1e9 : 0.0);
                    if (r > worst[o]) worst[o] = r;
                    if (!e.pass(o)) {
                        ok = false;
                        broken += " " + z.name + ":" + chain_name(o);
                    }
                }
                nbroken += !ok;
            }
            broken_total += nbroken;
            std::printf("%-9g %-5s %9.2f %9.2f %9.2f %9.2f %9.2f  %d%s\n", sd, std::string(dtype_name(t)).c_str(), worst[kO], worst[kLse],
                        worst[kDq], worst[kDk], worst[kDv], nbroken, broken.c_str());
        }
    return broken_total == 0 ? 0 : 1;
}
