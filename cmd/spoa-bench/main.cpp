// spoa-bench: SPOP load generator. Being written (issue 2); not functional yet.
#include <cstdio>
int main() {
  std::fprintf(stderr, "spoa-bench: not implemented yet\n");
  return 2;
}
