// oss.statlib -2 plugin for the tape testbed: report tape (MSS) residency through
// the stat st_rdev bits XRDSFS_OFFLINE / XRDSFS_HASBKUP, so that kXR_offline /
// kXR_bkpexist reach the client (gfal2: NEARLINE / ONLINE_AND_NEARLINE).
// Parms: <mss root> [latency in microseconds]
//   mss root: the same directory as oss.remoteroot;
//   latency:  added to every client stat, to emulate a remote storage's
//             metadata round trip in benchmarks (default 0).
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include "XrdOss/XrdOss.hh"
#include "XrdOss/XrdOssStatInfo.hh"
#include "XrdSfs/XrdSfsFlags.hh"
#include "XrdVersion.hh"

static std::string mssRoot;
static useconds_t latency = 0;

static int TapeStat(const char *pfn, struct stat *buf, int opts, XrdOucEnv *, const char *lfn)
{
   if (!buf) return 0;                                 // add/remove events: ignore
   int rc = stat(pfn, buf);
   if ((opts & (XRDOSS_resonly | XRDOSS_preop)) || !lfn || mssRoot.empty()) return rc;
   if (latency) usleep(latency);
   struct stat mss;
   std::string mpath = mssRoot + lfn;
   if (!rc)                                            // disk replica present
      {if (S_ISREG(buf->st_mode) && !stat(mpath.c_str(), &mss) && S_ISREG(mss.st_mode)
       &&  mss.st_size == buf->st_size) buf->st_rdev = XRDSFS_HASBKUP;
       return 0;
      }
   if (errno != ENOENT || stat(mpath.c_str(), &mss)) {errno = ENOENT; return -1;}
   *buf = mss;                                         // tape-only file (or dir)
   if (S_ISREG(mss.st_mode)) buf->st_rdev = XRDSFS_OFFLINE | XRDSFS_HASBKUP;
      else buf->st_rdev = 0;
   return 0;
}

extern "C" XrdOssStatInfo2_t XrdOssStatInfoInit2(XrdOss *, XrdSysLogger *, const char *,
                                                 const char *parms, XrdOucEnv *)
{
   const char *prog = getenv("XRDPROG");
   if (parms && prog && !strcmp(prog, "xrootd"))      // only the data server fakes residency
      {std::istringstream in(parms);
       long us = 0;
       in >> mssRoot >> us;
       while (!mssRoot.empty() && mssRoot.back() == '/') mssRoot.pop_back();
       if (us > 0) latency = static_cast<useconds_t>(us);
      }
   return TapeStat;
}
XrdVERSIONINFO(XrdOssStatInfoInit2, TapeStat);
