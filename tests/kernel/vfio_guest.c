/* The guest side of tests/kernel/test_vfio_dmabuf.py: a static client of the Linux 7.2 vfio uAPI.
 *
 * Usage: vfio_guest BDF CASES OUT
 * Opens BDF through the VFIO group API (type1 container; Debian's 7.2 has no CONFIG_IOMMUFD and no
 * CONFIG_VFIO_NOIOMMU), then runs the steps of CASES, one a line, and writes one result line per step to OUT:
 *   feat NAME HEX       VFIO_DEVICE_FEATURE on exactly these bytes (placed against a PROT_NONE page, so any
 *                       read past them faults: EFAULT as the model's short buffer); a new fd is closed again
 *   keep NAME HEX       the same, the new dma-buf fd kept as "the buffer" for the steps below
 *   cmd NAME VALUE      write the 16-bit PCI command register through the config region (pwrite)
 *   capw NAME ID OFF V  write the 16-bit V at OFF in the standard capability ID (found by walking the list
 *                       through the config region); bgcapw does it in a child as below
 *   reset NAME          VFIO_DEVICE_RESET
 *   mmap NAME           mmap() the kept dma-buf (one page, shared, read)
 *   sync NAME           DMA_BUF_IOCTL_EXPORT_SYNC_FILE (read) on the kept dma-buf
 *   close NAME          close the kept dma-buf
 *   fence NAME          an unsignalled vgem fence (DRM_IOCTL_VGEM_FENCE_ATTACH on a dumb buffer, exported as a
 *                       sync_file by DMA_BUF_IOCTL_EXPORT_SYNC_FILE) put into the kept dma-buf as a WRITE fence
 *                       with DMA_BUF_IOCTL_IMPORT_SYNC_FILE
 *   bgcmd NAME VALUE    the command register write in a child process; RC is 1 when the child is still inside
 *   bgreset NAME        the write after WAIT_MS ms (it sleeps in the kernel), 0 when it returned
 *   bgfeat NAME HEX     (likewise VFIO_DEVICE_RESET, VFIO_DEVICE_FEATURE)
 *   bgunbind NAME       write BDF to vfio-pci's sysfs unbind in a child (which first closes its copy of the device)
 *   bgclose NAME        close the device for good: the parent closes its fd, then a child closes the last one, so
 *                       the release (vfio_pci_core_close_device()) runs in the child; later steps have no device
 *   signal NAME         DRM_IOCTL_VGEM_FENCE_SIGNAL of the last fence, then wait for every child: each writes
 *                       its own line NAME.done RC ERRNO GETFL CLOEXEC SIZE when its call returns
 * Result line: NAME RC ERRNO GETFL CLOEXEC SIZE  (RC is 0 or -1 for fd-returning calls: the fd number is not
 * compared; GETFL/CLOEXEC/SIZE are -1 when no dma-buf fd was made).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <drm/drm.h>
#include <drm/drm_mode.h>
#include <drm/vgem_drm.h>
#include <linux/dma-buf.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef VFIO_DEVICE_FEATURE_DMA_BUF
#error "needs the Linux 7.2 uAPI headers (VFIO_DEVICE_FEATURE_DMA_BUF)"
#endif

#define WAIT_MS 1500
static int dev = -1, kept = -1, vgem = -1, vgem_bo = -1;
static unsigned vgem_fence;
static int children;
static off_t cfg_off;
static FILE *out;

static void die(const char *what) {
  fprintf(stderr, "vfio_guest: %s: %s\n", what, strerror(errno));
  fprintf(out ? out : stderr, "FATAL %s %d\n", what, errno);
  if (out) fclose(out);
  exit(1);
}

static unsigned char *guarded(const unsigned char *bytes, size_t n) {
  /* bytes end exactly where a PROT_NONE page starts */
  size_t pages = (n + 4095) / 4096 + 1;
  unsigned char *m = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) die("mmap guard");
  if (mprotect(m + (pages - 1) * 4096, 4096, PROT_NONE)) die("mprotect");
  unsigned char *p = m + (pages - 1) * 4096 - n;
  memcpy(p, bytes, n);
  return p;
}

static size_t unhex(const char *h, unsigned char *buf, size_t cap) {
  size_t n = 0;
  if (!strcmp(h, "-")) return 0;
  while (h[0] && h[1] && n < cap) {
    unsigned v;
    if (sscanf(h, "%2x", &v) != 1) break;
    buf[n++] = (unsigned char)v;
    h += 2;
  }
  return n;
}

static void result(const char *name, long rc, int err, int fd) {
  long fl = -1, cx = -1, size = -1;
  if (fd >= 0) {
    fl = fcntl(fd, F_GETFL);
    cx = (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 1 : 0;
    size = (long)lseek(fd, 0, SEEK_END);
  }
  fprintf(out, "%s %ld %d %ld %ld %ld\n", name, rc, rc < 0 ? err : 0, fl, cx, size);
  fflush(out);
}

static int open_device(const char *bdf) {
  char link[256], target[256], path[300];
  snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", bdf);
  ssize_t n = readlink(link, target, sizeof target - 1);
  if (n < 0) die("iommu_group link");
  target[n] = 0;
  snprintf(path, sizeof path, "/dev/vfio/%s", strrchr(target, '/') + 1);
  int container = open("/dev/vfio/vfio", O_RDWR);
  if (container < 0) die("open /dev/vfio/vfio");
  if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION) die("api version");
  int group = open(path, O_RDWR);
  if (group < 0) die(path);
  struct vfio_group_status st = {.argsz = sizeof st};
  if (ioctl(group, VFIO_GROUP_GET_STATUS, &st)) die("group status");
  if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) { errno = EBUSY; die("group not viable"); }
  if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container)) die("set container");
  if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU)) die("set iommu");
  int fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, bdf);
  if (fd < 0) die("get device fd");
  struct vfio_region_info ri = {.argsz = sizeof ri, .index = VFIO_PCI_CONFIG_REGION_INDEX};
  if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &ri)) die("config region info");
  cfg_off = (off_t)ri.offset;
  fprintf(out, "# opened %s group %s config at %#llx\n", bdf, path, (unsigned long long)ri.offset);
  return fd;
}

/* Run one call in a child: the child writes NAME.done when it returns; the parent reports whether it is still
 * inside the kernel after WAIT_MS. */
static const char *bdf_name;

/* The config-space offset of standard capability `id`, or -1. */
static int find_cap(unsigned id) {
  uint8_t pos = 0, hdr[2];
  if (pread(dev, &pos, 1, cfg_off + 0x34) != 1) return -1;
  for (int n = 0; pos >= 0x40 && n < 48; n++) {
    if (pread(dev, hdr, 2, cfg_off + pos) != 2) return -1;
    if (hdr[0] == id) return pos;
    pos = hdr[1] & 0xfc;
  }
  return -1;
}

static ssize_t capw(const char *rest) {
  unsigned id, off, val;
  if (sscanf(rest, "%i %i %i", &id, &off, &val) != 3) { errno = EINVAL; return -1; }
  int pos = find_cap(id);
  if (pos < 0) { errno = ENOENT; return -1; }
  uint16_t v = (uint16_t)val;
  return pwrite(dev, &v, 2, cfg_off + pos + off) == 2 ? 0 : -1;
}

static void background(const char *name, const char *op, unsigned char *arg, uint16_t value, const char *rest) {
  char done[160];
  snprintf(done, sizeof done, "%s.done", name);
  fflush(out);
  int go[2];
  if (pipe(go)) die("pipe");
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    char c;
    close(go[1]);
    if (read(go[0], &c, 1) != 1) _exit(3);
    errno = 0;
    if (!strcmp(op, "bgunbind")) {
      close(dev);
      int u = open("/sys/bus/pci/drivers/vfio-pci/unbind", O_WRONLY);
      ssize_t w = u < 0 ? -1 : write(u, bdf_name, strlen(bdf_name));
      result(done, w == (ssize_t)strlen(bdf_name) ? 0 : -1, errno, -1);
    } else if (!strcmp(op, "bgclose")) {
      int rc = close(dev);
      result(done, rc, errno, -1);
    } else if (!strcmp(op, "bgcapw")) {
      ssize_t w = capw(rest);
      result(done, (int)w, errno, -1);
    } else if (!strcmp(op, "bgcmd")) {
      ssize_t w = pwrite(dev, &value, 2, cfg_off + 4);
      result(done, w == 2 ? 0 : -1, errno, -1);
    } else if (!strcmp(op, "bgreset")) {
      int rc = ioctl(dev, VFIO_DEVICE_RESET);
      result(done, rc, errno, -1);
    } else {
      int rc = ioctl(dev, VFIO_DEVICE_FEATURE, arg);
      int err = errno;
      result(done, rc > 0 ? 0 : rc, err, rc > 0 ? rc : -1);
    }
    fflush(out);
    _exit(0);
  }
  close(go[0]);
  if (!strcmp(op, "bgclose")) {
    close(dev);
    dev = -1;
  }
  if (write(go[1], "g", 1) != 1) die("pipe write");
  close(go[1]);
  children++;
  struct timespec ts = {WAIT_MS / 1000, (WAIT_MS % 1000) * 1000000L};
  nanosleep(&ts, NULL);
  int st;
  pid_t got = waitpid(pid, &st, WNOHANG);
  if (got == pid) children--;
  result(name, got == pid ? 0 : 1, 0, -1);
}

static void fence(const char *name) {
  if (vgem < 0) {
    vgem = open("/dev/dri/card0", O_RDWR);
    if (vgem < 0) { result(name, -1, errno, -1); return; }
    struct drm_mode_create_dumb dumb = {.height = 1, .width = 1024, .bpp = 32};
    if (ioctl(vgem, DRM_IOCTL_MODE_CREATE_DUMB, &dumb)) { result(name, -1, errno, -1); return; }
    vgem_bo = (int)dumb.handle;
  }
  struct drm_vgem_fence_attach fa = {.handle = (unsigned)vgem_bo, .flags = VGEM_FENCE_WRITE};
  if (ioctl(vgem, DRM_IOCTL_VGEM_FENCE_ATTACH, &fa)) { result(name, -1, errno, -1); return; }
  vgem_fence = fa.out_fence;
  struct drm_prime_handle ph = {.handle = (unsigned)vgem_bo, .flags = DRM_CLOEXEC | DRM_RDWR};
  if (ioctl(vgem, DRM_IOCTL_PRIME_HANDLE_TO_FD, &ph)) { result(name, -1, errno, -1); return; }
  struct dma_buf_export_sync_file ex = {.flags = DMA_BUF_SYNC_READ, .fd = -1};
  if (ioctl(ph.fd, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &ex)) { result(name, -1, errno, -1); return; }
  close(ph.fd);
  struct dma_buf_import_sync_file im = {.flags = DMA_BUF_SYNC_WRITE, .fd = ex.fd};
  errno = 0;
  int rc = ioctl(kept, DMA_BUF_IOCTL_IMPORT_SYNC_FILE, &im);
  result(name, rc, errno, -1);
  close(ex.fd);
}

static void signal_fence(const char *name) {
  struct drm_vgem_fence_signal fs = {.fence = vgem_fence};
  errno = 0;
  int rc = ioctl(vgem, DRM_IOCTL_VGEM_FENCE_SIGNAL, &fs);
  result(name, rc, errno, -1);
  while (children > 0) {
    if (wait(NULL) < 0) break;
    children--;
  }
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: vfio_guest BDF CASES OUT\n"); return 2; }
  out = fopen(argv[3], "w");
  if (!out) die("open out");
  FILE *in = fopen(argv[2], "r");
  if (!in) die("open cases");
  bdf_name = argv[1];
  dev = open_device(argv[1]);
  static char line[1 << 22];
  static unsigned char bytes[1 << 21];
  while (fgets(line, sizeof line, in)) {
    char op[16], name[128], arg[64];
    line[strcspn(line, "\n")] = 0;
    if (sscanf(line, "%15s %127s", op, name) != 2) continue;
    char *rest = line + strlen(op) + 1 + strlen(name);
    while (*rest == ' ') rest++;
    if (!strcmp(op, "feat") || !strcmp(op, "keep")) {
      size_t n = unhex(rest, bytes, sizeof bytes);
      unsigned char *p = guarded(bytes, n);
      errno = 0;
      int rc = ioctl(dev, VFIO_DEVICE_FEATURE, p);
      int err = errno;
      uint32_t flags;
      memcpy(&flags, bytes + 4, 4);
      int isbuf = rc > 0 && (flags & VFIO_DEVICE_FEATURE_MASK) == VFIO_DEVICE_FEATURE_DMA_BUF &&
                  (flags & VFIO_DEVICE_FEATURE_GET) && !(flags & VFIO_DEVICE_FEATURE_PROBE);
      result(name, rc > 0 ? 0 : rc, err, isbuf ? rc : -1);
      if (isbuf) {
        if (!strcmp(op, "keep")) {
          if (kept >= 0) close(kept);
          kept = rc;
        } else {
          close(rc);
        }
      }
    } else if (!strcmp(op, "cmd")) {
      uint16_t v = (uint16_t)strtoul(sscanf(rest, "%63s", arg) == 1 ? arg : "0", NULL, 0);
      errno = 0;
      ssize_t w = pwrite(dev, &v, 2, cfg_off + 4);
      result(name, w == 2 ? 0 : -1, errno, -1);
    } else if (!strcmp(op, "reset")) {
      errno = 0;
      int rc = ioctl(dev, VFIO_DEVICE_RESET);
      result(name, rc, errno, -1);
    } else if (!strcmp(op, "mmap")) {
      errno = 0;
      void *m = mmap(NULL, 4096, PROT_READ, MAP_SHARED, kept, 0);
      result(name, m == MAP_FAILED ? -1 : 0, errno, -1);
      if (m != MAP_FAILED) munmap(m, 4096);
    } else if (!strcmp(op, "sync")) {
      struct dma_buf_export_sync_file sf = {.flags = DMA_BUF_SYNC_READ, .fd = -1};
      errno = 0;
      int rc = ioctl(kept, DMA_BUF_IOCTL_EXPORT_SYNC_FILE, &sf);
      result(name, rc, errno, -1);
      if (rc == 0 && sf.fd >= 0) close(sf.fd);
    } else if (!strcmp(op, "close")) {
      errno = 0;
      int rc = close(kept);
      kept = -1;
      result(name, rc, errno, -1);
    } else if (!strcmp(op, "fence")) {
      fence(name);
    } else if (!strcmp(op, "signal")) {
      signal_fence(name);
    } else if (!strcmp(op, "bgunbind") || !strcmp(op, "bgclose")) {
      background(name, op, NULL, 0, rest);
    } else if (!strcmp(op, "bgcmd") || !strcmp(op, "bgreset")) {
      background(name, op, NULL, (uint16_t)strtoul(sscanf(rest, "%63s", arg) == 1 ? arg : "0", NULL, 0), rest);
    } else if (!strcmp(op, "bgcapw")) {
      background(name, op, NULL, 0, rest);
    } else if (!strcmp(op, "capw")) {
      errno = 0;
      ssize_t w = capw(rest);
      result(name, (int)w, errno, -1);
    } else if (!strcmp(op, "bgfeat")) {
      size_t n = unhex(rest, bytes, sizeof bytes);
      background(name, op, guarded(bytes, n), 0, rest);
    } else {
      fprintf(out, "%s -1 %d -1 -1 -1 unknown-op\n", name, EINVAL);
    }
  }
  fprintf(out, "# done\n");
  fclose(out);
  return 0;
}
