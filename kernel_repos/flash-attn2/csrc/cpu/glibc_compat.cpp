// Keeps the CPU library loadable on glibc 2.28 (manylinux_2_28, RHEL 8 era).
//
// libstdc++'s inline reference counting (shared_ptr, std::string, locale) reads __libc_single_threaded, a glibc
// 2.32 variable, whenever the headers of a glibc >= 2.32 host declare it: every library built here would then
// need GLIBC_2.32 at load time. This hidden definition satisfies those references inside the library itself.
// Its value 0 means "possibly multi-threaded", so the inline code always takes the atomic path: correct under
// OpenMP and any caller's threads, at the cost of an atomic increment where a plain one would do.
extern "C" {
__attribute__((visibility("hidden"))) char __libc_single_threaded = 0;
}
