// switchyard command line.
#include <cstdio>
int main() { return 0; }
