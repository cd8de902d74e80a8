#pragma once
// Host tensor helpers used by strategies and tools: slicing views and copying between views of the
// same shape with dtype conversion. Threads over rows.
#include "longattn/tensor.hpp"

namespace longattn {

// The sub-view [start, start+len) along dim.
TensorView slice(const TensorView& t, int dim, std::int64_t start, std::int64_t len);
// dst = src elementwise (shapes must match; dtypes may differ).
void copy(const TensorView& src, const TensorView& dst);
// dst (fp32) += src (any dtype).
void add_into(const TensorView& src, const TensorView& dst);
void fill(const TensorView& dst, float value);  // rounded to dst's dtype
inline void fill_zero(const TensorView& dst) { fill(dst, 0.0f); }

}  // namespace longattn
