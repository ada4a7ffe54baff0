// Files replaced atomically and durably, and the temporary files that get them there.
//
// A file F is replaced by writing a temporary file in F's directory, fsyncing it, renaming it over
// F and fsyncing the directory; a reader sees the old F or the new one, never a mix, and after the
// directory fsync the new one survives a crash. The temporary file is named
//
//   F.tmp-<pid>-<16 hex digits>      e.g. web1.snap.tmp-4711-9f3c02a1d8e4b765
//
// with the writer's pid (so an operator can attribute a leftover) and a random part (so nobody
// else who can write to the directory can predict the name and plant a file or a symlink there
// first). It is created with O_CREAT|O_EXCL|O_NOFOLLOW and mode 0600: it is always a new file,
// never one that existed, never reached through a symlink. Its writer holds an flock on it until
// it is renamed into place. A writer that crashes leaves its temporary file behind, unlocked; the
// next writer of F removes the leftovers nobody holds (the pid cannot tell: a VM process sees
// itself as pid 1 in its own PID namespace, and other processes' pids not at all).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "base/error.h"
#include "base/fd.h"

namespace vmctl {

// The directory part of `path` ("." for a bare name, "/" for a file in the root).
std::string directory_of(const std::string& path);

// fsync(2) of a directory, so that renames and unlinks in it are durable. Errors are errors: a
// rename that is not durable is not committed.
Status fsync_directory(const std::string& directory);

struct TempFile {
  Fd fd;
  std::string path;
};

// "F.tmp-": what every temporary file of `target` starts with.
std::string temp_file_prefix(const std::string& target);

// A new temporary file for `target`, in its directory, open for writing (see the top of this
// file). Removes the leftovers of `target` first. `random` supplies the unpredictable part (tests
// pass a fixed sequence to plant files at the names it will try).
Result<TempFile> create_temp_file(const std::string& target);
Result<TempFile> create_temp_file(const std::string& target,
                                  const std::function<uint64_t()>& random);

// Removes the temporary files of `target` that no writer holds (flock); returns how many it
// removed. Files being written, and names that do not follow the pattern, are left alone.
int remove_stale_temp_files(const std::string& target);

// fsyncs `temp`, closes it, renames it over `target` and fsyncs the directory.
Status commit_temp_file(TempFile& temp, const std::string& target);

// Replaces `path` with `contents` atomically and durably (temporary file, fsync, rename, fsync of
// the directory). On error `path` is unchanged and the temporary file is removed.
Status write_file_atomically(const std::string& path, std::string_view contents);

}  // namespace vmctl
