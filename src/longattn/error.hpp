#pragma once
// One exception type for bad input: the message names the option or field and the allowed values.
#include <sstream>
#include <stdexcept>
#include <string>

namespace longattn {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// require(cond, "pattern.window.left", "must be >= -1, got ", x);
template <class... Args>
inline void require(bool cond, const char* what, const Args&... parts) {
    if (cond) return;
    std::ostringstream os;
    os << what << ": ";
    (os << ... << parts);
    throw Error(os.str());
}

}  // namespace longattn
