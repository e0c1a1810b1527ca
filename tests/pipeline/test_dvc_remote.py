"""pipeline/dvc_remote.py: DVC's errors against an S3 remote, as dvc 3.67.1 + dvc-s3 3.3.0 printed them against a
real S3 API (moto in server mode), each reduced to one line with what to do."""

import subprocess

import pytest

from pipeline import dvc_remote

BLURB = "\n\nHaving any troubles? Hit us up at https://dvc.org/support, we are always happy to help!\n"
SEEN = {
    "unreachable": ('ERROR: unexpected error - Could not connect to the endpoint URL: "http://127.0.0.1:6199/'
                    'shelfcast-dvc/store/files/md5/d1/3ea9128c94e1b82d748343be9b7306.dir"', "cannot be reached"),
    "wrong credentials": ("ERROR: unexpected error - Forbidden: An error occurred (403) when calling the HeadObject "
                          "operation: Forbidden", "refused these credentials"),
    "no credentials": ("ERROR: unexpected error - Unable to locate credentials", "no credentials for the remote"),
    "no bucket": ("ERROR: unexpected error - The specified bucket does not exist: An error occurred (NoSuchBucket) "
                  "when calling the ListObjectsV2 operation: The specified bucket does not exist",
                  "bucket does not exist: create it"),
    "object deleted": ("WARNING: Some of the cache files do not exist neither locally nor on remote. Missing cache "
                       "files:\nmd5: 19a754eaa470242bd1c89ac43aaa4b20.dir\nERROR: failed to pull data from the cloud - "
                       "Checkout failed for following targets:\nmodels/candidate\nIs your cache up to date?\n"
                       "<https://error.dvc.org/missing-files>", "the remote lacks these objects"),
    "no plugin": ("ERROR: unexpected error - s3 is supported, but requires 'dvc-s3' to be installed: No module "
                  "named 'dvc_s3'", "VENV_EXTRAS=s3"),
}


@pytest.mark.parametrize("case", sorted(SEEN))
def test_each_remote_failure_is_one_line_with_dvcs_reason_and_what_to_do(case):
    stderr, remedy = SEEN[case]
    line = dvc_remote.failure("dvc pull", subprocess.CompletedProcess(["dvc"], 255, "", stderr + BLURB))
    assert "\n" not in line and "Having any troubles" not in line
    assert line.startswith("`dvc pull` failed: ERROR: ") or line.startswith("`dvc pull` failed: WARNING: ")
    assert remedy in line.split(" -> ", 1)[1], line
    if case == "object deleted":  # what is missing is named
        assert "19a754eaa470242bd1c89ac43aaa4b20.dir" in line and "models/candidate" in line


def test_a_reason_nothing_matches_still_says_what_to_do():
    line = dvc_remote.failure("dvc push", subprocess.CompletedProcess(["dvc"], 1, "", "ERROR: something new" + BLURB))
    assert line.startswith("`dvc push` failed: ERROR: something new -> check the remote (`dvc remote list`)")
