// What a consumer of the component "distributed" writes (tests/consumer/distributed:
// configured by the test suite, not built).
#include <nn/distributed.hpp>

int main(int argc, char** argv) {
  nn::MpiEnvironment mpi(argc, argv);
  return mpi.size() > 0 ? 0 : 1;
}
