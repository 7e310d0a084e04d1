/* A CUDA device query through the driver API, loaded with dlopen so it
 * builds without the CUDA toolkit: the library must come from the host's
 * driver (sifrun exec --nv binds it). Prints one line per device. */
#include <dlfcn.h>
#include <stdio.h>
#include <stddef.h>

typedef int CUresult;
typedef int CUdevice;

int main(void) {
    void *cuda = dlopen("libcuda.so.1", RTLD_NOW);
    if (!cuda) {
        fprintf(stderr, "devquery: %s\n", dlerror());
        return 2;
    }
    CUresult (*cuInit)(unsigned) = (CUresult (*)(unsigned))dlsym(cuda, "cuInit");
    CUresult (*cuDriverGetVersion)(int *) = (CUresult (*)(int *))dlsym(cuda, "cuDriverGetVersion");
    CUresult (*cuDeviceGetCount)(int *) = (CUresult (*)(int *))dlsym(cuda, "cuDeviceGetCount");
    CUresult (*cuDeviceGet)(CUdevice *, int) = (CUresult (*)(CUdevice *, int))dlsym(cuda, "cuDeviceGet");
    CUresult (*cuDeviceGetName)(char *, int, CUdevice) =
        (CUresult (*)(char *, int, CUdevice))dlsym(cuda, "cuDeviceGetName");
    CUresult (*cuDeviceTotalMem)(size_t *, CUdevice) =
        (CUresult (*)(size_t *, CUdevice))dlsym(cuda, "cuDeviceTotalMem_v2");
    if (!cuInit || !cuDriverGetVersion || !cuDeviceGetCount || !cuDeviceGet || !cuDeviceGetName || !cuDeviceTotalMem) {
        fprintf(stderr, "devquery: libcuda lacks a driver API symbol\n");
        return 2;
    }
    CUresult rc = cuInit(0);
    if (rc != 0) {
        fprintf(stderr, "devquery: cuInit failed with CUDA error %d\n", rc);
        return 1;
    }
    int version = 0, count = 0;
    cuDriverGetVersion(&version);
    cuDeviceGetCount(&count);
    printf("CUDA driver API %d.%d, %d device(s)\n", version / 1000, (version % 1000) / 10, count);
    for (int i = 0; i < count; i++) {
        CUdevice d;
        char name[256] = {0};
        size_t mem = 0;
        cuDeviceGet(&d, i);
        cuDeviceGetName(name, sizeof name, d);
        cuDeviceTotalMem(&mem, d);
        printf("device %d: %s, %zu MiB\n", i, name, mem >> 20);
    }
    return count > 0 ? 0 : 1;
}
