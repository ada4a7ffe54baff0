#include "vmprocess/jail.h"

#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "vmm/kvm/kvm.h"

namespace vmctl::vmprocess {
namespace {

// Devices a VM process may open after the jail is built (/dev/kvm is open by then already).
constexpr const char* kDevices[] = {"/dev/null",    "/dev/zero",     "/dev/urandom",
                                    "/dev/random",  "/dev/kvm",      "/dev/userfaultfd",
                                    "/dev/net/tun", "/dev/vhost-net"};
// Host facts the VMM reads: KVM's module parameters, the CPUs.
constexpr const char* kHostFacts[] = {"/sys/module", "/sys/devices/system/cpu", "/etc/ssl"};

// Capabilities a VMM running as root keeps: userfaultfd without the unprivileged sysctl (lazy
// restore, post-copy), locking guest memory, TCP ports below 1024, tap devices.
constexpr int kKeptCapabilities[] = {CAP_SYS_PTRACE, CAP_IPC_LOCK, CAP_NET_BIND_SERVICE,
                                     CAP_NET_ADMIN};

Status failed(const std::string& what) {
  return Error::from_errno(fmt::format("building the VM process's jail: {}", what), errno);
}

Status make_dirs(const std::string& path, mode_t mode) {
  size_t at = 1;
  while (at <= path.size()) {
    size_t end = path.find('/', at);
    std::string prefix = path.substr(0, end);
    if (::mkdir(prefix.c_str(), mode) == 0) {
      // Not masked by the umask vmctld passes on (0077): an unprivileged VM user must be able to
      // walk down to its folders.
      if (::chmod(prefix.c_str(), mode) != 0) return failed("chmod " + prefix);
    } else if (errno != EEXIST) {
      return failed("mkdir " + prefix);
    }
    if (end == std::string::npos) break;
    at = end + 1;
  }
  return ok_status();
}

// Binds `source` at the same path under `root`; a source that does not exist is left out.
Status bind_into(const std::string& root, const std::string& source, bool read_only) {
  if (source.empty() || source[0] != '/' || source == "/") {
    return Error::user(fmt::format(
        "jail: cannot bind '{}': give absolute paths below / (binding / makes no jail)", source));
  }
  struct stat st {};
  if (::stat(source.c_str(), &st) != 0) {
    if (errno == ENOENT) return ok_status();
    return failed("stat " + source);
  }
  std::string target = root + source;
  if (S_ISDIR(st.st_mode)) {
    TRY(make_dirs(target, 0755));
  } else {
    TRY(make_dirs(target.substr(0, target.rfind('/')), 0755));
    int fd = ::open(target.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) return failed("creating the mount point " + target);
    ::close(fd);
  }
  // Recursive: an allowed directory with a file system mounted below it must show that one, not
  // the directory underneath.
  if (::mount(source.c_str(), target.c_str(), nullptr, MS_BIND | MS_REC, nullptr) != 0) {
    return failed("binding " + source);
  }
  if (read_only && ::mount(nullptr, target.c_str(), nullptr,
                           MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID, nullptr) != 0) {
    return failed("making " + source + " read-only");
  }
  return ok_status();
}

Status build_root(const JailOptions& o) {
  if (::unshare(CLONE_NEWNS) != 0) return failed("unshare(CLONE_NEWNS) (the jail needs root)");
  // Nothing done here may show on the host.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return failed("making the mounts private");
  }
  const std::string& root = o.root;
  if (::mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m") != 0) {
    return failed("mounting a tmpfs on " + root);
  }
  for (const std::string& path : o.writable) TRY(bind_into(root, path, false));
  for (const std::string& path : o.read_only) TRY(bind_into(root, path, true));
  for (const char* device : kDevices) TRY(bind_into(root, device, false));
  for (const char* path : kHostFacts) TRY(bind_into(root, path, true));
  TRY(make_dirs(root + "/proc", 0555));
  // Its own PID namespace's processes only (vmctld starts it in a new one).
  if (::mount("proc", (root + "/proc").c_str(), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              nullptr) != 0) {
    return failed("mounting /proc");
  }
  TRY(make_dirs(root + "/tmp", 01777));
  if (::chdir(root.c_str()) != 0) return failed("chdir " + root);
  // pivot_root(".", "."): the old root ends up stacked on the new one, and is detached at once.
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return failed("pivot_root");
  if (::umount2(".", MNT_DETACH) != 0) return failed("detaching the host's root");
  if (::chdir("/") != 0) return failed("chdir /");
  return ok_status();
}

struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
};

// Looked up before the jail hides /etc/passwd.
Result<Identity> resolve_user(const std::string& user) {
  uid_t uid = 0;
  gid_t gid = 0;
  char* end = nullptr;
  unsigned long number = std::strtoul(user.c_str(), &end, 10);
  if (!user.empty() && end != user.c_str() && (*end == '\0' || *end == ':')) {
    // UID or UID:GID
    uid = static_cast<uid_t>(number);
    gid = static_cast<gid_t>(number);
    if (*end == ':') gid = static_cast<gid_t>(std::strtoul(end + 1, nullptr, 10));
  } else {
    passwd* pw = ::getpwnam(user.c_str());
    if (!pw) return Error::user(fmt::format("sandbox user {}: no such user on this host", user));
    uid = pw->pw_uid;
    gid = pw->pw_gid;
  }
  return Identity{uid, gid};
}

Status become(Identity who) {
  uid_t uid = who.uid;
  gid_t gid = who.gid;
  if (uid == 0) return ok_status();
  // Only its own group: supplementary groups could open what the jail means to close.
  if (::setgroups(1, &gid) != 0) return failed("setgroups");
  if (::setresgid(gid, gid, gid) != 0) return failed(fmt::format("setresgid {}", gid));
  if (::setresuid(uid, uid, uid) != 0) return failed(fmt::format("setresuid {}", uid));
  return ok_status();
}

// Drops every capability but kKeptCapabilities from all sets, the bounding set included.
Status drop_capabilities() {
  for (int cap = 0; cap <= 63; ++cap) {
    bool kept = false;
    for (int k : kKeptCapabilities) kept |= k == cap;
    if (kept) continue;
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) {
      return failed(fmt::format("dropping capability {}", cap));
    }
  }
  ::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (::syscall(SYS_capget, &header, data) != 0) return failed("capget");
  __user_cap_data_struct kept[2] = {};
  for (int k : kKeptCapabilities) {
    uint32_t bit = 1u << (k % 32);
    kept[k / 32].effective =
        data[k / 32].effective & bit ? kept[k / 32].effective | bit : kept[k / 32].effective;
    kept[k / 32].permitted =
        data[k / 32].permitted & bit ? kept[k / 32].permitted | bit : kept[k / 32].permitted;
  }
  if (::syscall(SYS_capset, &header, kept) != 0) return failed("capset");
  return ok_status();
}

}  // namespace

Status enter_jail(const JailOptions& o) {
  if (o.root.empty() && o.user.empty() && !o.drop_capabilities) return ok_status();
  // Before the jail takes /dev away and before the uid changes.
  TRY_CTX(vmm::kvm::KvmSystem::open_early(), "the VM process's jail");
  Identity who{::getuid(), ::getgid()};
  if (!o.user.empty()) who = TRY(resolve_user(o.user));
  if (!o.root.empty()) TRY(build_root(o));
  if (!o.user.empty()) TRY(become(who));
  if (o.drop_capabilities && ::getuid() == 0) TRY(drop_capabilities());
  return ok_status();
}

}  // namespace vmctl::vmprocess
