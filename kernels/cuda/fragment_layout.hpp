#pragma once
// Where the operands of mma.sync.m16n8k16 (bf16/fp16 in, fp32 accumulate) live, per lane, and which
// shared-memory row each lane hands to ldmatrix.x4 to load them. Used by the kernels and, on the host,
// by a warp emulator in the tests that checks these against the PTX ISA's fragment tables.
//
// With g = lane / 4 and t = lane % 4 (PTX ISA, "Matrix Fragments for mma.m16n8k16"):
//   A (16 x 16, row major), 4 registers of 2 elements, low half first:
//     reg 0: (g, 2t..2t+1)   reg 1: (g+8, 2t..2t+1)   reg 2: (g, 2t+8..2t+9)   reg 3: (g+8, 2t+8..2t+9)
//   B (16 x 8, k x n), 2 registers:  reg 0: (k 2t..2t+1, n g)   reg 1: (k 2t+8..2t+9, n g)
//   C (16 x 8, fp32), 4 values:      c0, c1: (g, 2t..2t+1)      c2, c3: (g+8, 2t..2t+1)
// ldmatrix.x4 loads four 8 x 8 matrices; lanes 8j..8j+7 give the row addresses of matrix j, and
// register j of lane L receives row L/4, elements 2(L%4)..2(L%4)+1 of matrix j (of its transpose with
// .trans).
//
// Hence the three loads the kernels use, each one ldmatrix.x4 (row, col relative to the 16 x 16 block):
//   a_*:   A from a row-major [m][k] tile:                 registers = A regs 0..3
//   bnk_*: B for two n-tiles from an [n][k] tile (K in S = Q K^T): regs 0, 1 = n-tile 0; 2, 3 = n-tile 1
//   bkn_*: B for two n-tiles from a [k][n] tile with .trans (V in O = P V): same register order
// and the accumulator -> A conversion: the C fragments of n-tiles 2i and 2i+1 are, packed in pairs,
// exactly A registers {c[2i][0,1], c[2i][2,3], c[2i+1][0,1], c[2i+1][2,3]} of k-step i.
#if defined(__CUDACC__)
#define LONGATTN_HD __host__ __device__ __forceinline__
#else
#define LONGATTN_HD inline
#endif

namespace longattn::kernels::cuda::frag {

LONGATTN_HD int a_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }
LONGATTN_HD int a_col(int lane) { return (lane >> 4) * 8; }

LONGATTN_HD int bnk_row(int lane) { return (lane & 7) + (lane >> 4) * 8; }  // n
LONGATTN_HD int bnk_col(int lane) { return ((lane >> 3) & 1) * 8; }          // k

LONGATTN_HD int bkn_row(int lane) { return (lane & 7) + ((lane >> 3) & 1) * 8; }  // k
LONGATTN_HD int bkn_col(int lane) { return (lane >> 4) * 8; }                     // n

// Row and column of accumulator value i (0..3) of a lane inside its 16 x 8 tile.
LONGATTN_HD int c_row(int lane, int i) { return (lane >> 2) + (i >> 1) * 8; }
LONGATTN_HD int c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }

}  // namespace longattn::kernels::cuda::frag
