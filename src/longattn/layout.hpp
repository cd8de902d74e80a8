#pragma once
// How a sequence of n global tokens is sharded over p ranks. Any n and any p: shards may differ by
// one token (or be empty when n < p); no divisibility rule.
//
//   contiguous: rank r holds one run of tokens.            n=10, p=3: [0..3] [4..6] [7..9]
//   zigzag:     2p chunks; rank r holds chunks r, 2p-1-r.   n=8,  p=2: [0,1, 6,7] [2,3, 4,5]
//   striped:    token g on rank g % p.                      n=7,  p=3: [0,3,6] [1,4] [2,5]
// Zigzag and striped give every rank the same causal work (up to rounding).
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace longattn {

enum class LayoutKind { contiguous, zigzag, striped };

LayoutKind parse_layout(const std::string& name);  // throws Error naming "layout"
const char* layout_name(LayoutKind k);

class Layout {
public:
    Layout(LayoutKind kind, std::int64_t n, int p);

    LayoutKind kind() const { return kind_; }
    std::int64_t tokens() const { return n_; }
    int ranks() const { return p_; }
    std::int64_t local_count(int r) const;
    std::int64_t global(int r, std::int64_t local) const;
    std::pair<int, std::int64_t> locate(std::int64_t g) const;  // (rank, local row)
    std::vector<std::int64_t> positions(int r) const;           // global position of each local row

private:
    // Start and size of part c when n is cut into `parts` near-equal parts.
    std::int64_t part_start(std::int64_t c, std::int64_t parts) const;

    LayoutKind kind_;
    std::int64_t n_;
    int p_;
};

}  // namespace longattn
