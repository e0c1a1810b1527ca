#!/usr/bin/env bash
# make commit-lock: commit dvc.lock and the metrics files the pipeline wrote (the arguments: dvc.lock first) to
# main and push them, when dvc.lock changed: the repository's versioned record of which data and model versions
# the promoted model came from (CD4ML). ml-pipeline's `record` job runs it after promote on main; a laptop runs the
# same after `make run`.
#
# Refuses (non-zero, nothing committed) on a branch other than $LOCK_BRANCH (main), in a pull request's run, with
# changes to tracked files other than these, when the local branch holds commits the remote's lacks, and without a
# git identity to commit with (user.name/user.email or GIT_AUTHOR_*/GIT_COMMITTER_*). Does
# nothing when dvc.lock is unchanged since HEAD. The commit is made on top of the remote's branch: when another
# push landed there since HEAD (the run's commit), the files are committed as this run wrote them, on top of it, and
# the message names the commit the run tested. A push that loses a race is retried on the new tip.
set -euo pipefail

remote="${LOCK_REMOTE:-origin}"
branch="${LOCK_BRANCH:-main}"
say() { printf 'commit-lock: %s\n' "$*"; }
fail() { printf 'commit-lock: %s\n' "$*" >&2; exit 1; }

[ "$#" -ge 1 ] || fail "usage: commit_lock.sh dvc.lock [metrics files...]"
lock="$1"
git rev-parse --git-dir >/dev/null 2>&1 || fail "$(pwd) is not a git repository: nothing committed"
[ "${GITHUB_EVENT_NAME:-}" != pull_request ] || fail "a pull request's run records nothing: nothing committed"
current="$(git symbolic-ref -q --short HEAD || true)"
[ "$current" = "$branch" ] || \
  fail "on ${current:-a detached HEAD}, not $branch: only a run on $branch is recorded; nothing committed"

# the files to record: those present in the tree or tracked (a metrics file the run removed is recorded removed)
files=()
for file in "$@"; do
  if [ -e "$file" ] || git ls-files --error-unmatch -- "$file" >/dev/null 2>&1; then files+=("$file"); fi
done
[ -e "$lock" ] || fail "$lock not found in $(pwd): run the pipeline first (make ml-pipeline); nothing committed"

excluded=()
for file in "$@"; do excluded+=(":(exclude)$file"); done
dirty="$(git status --porcelain --untracked-files=no -- . "${excluded[@]}")"
[ -z "$dirty" ] || fail "tracked files other than $* have changes; commit or stash them first (nothing committed):
$dirty"

if git diff --quiet HEAD -- "$lock" && git ls-files --error-unmatch -- "$lock" >/dev/null 2>&1; then
  say "$lock unchanged since $(git rev-parse --short=12 HEAD): nothing to commit"
  exit 0
fi

# The commit needs an author and a committer. ml-pipeline's record job sets GIT_AUTHOR_*/GIT_COMMITTER_* (the
# github-actions bot); another CI runner or a fresh laptop has neither those nor user.name/user.email, and git's
# refusal was a dozen lines after the fetch. No identity is made up here: whose name a commit to main carries is the
# team's choice. `git var` answers as the commit would (strict: a guessed address git accepts passes here too).
git var GIT_AUTHOR_IDENT >/dev/null 2>&1 && git var GIT_COMMITTER_IDENT >/dev/null 2>&1 || \
  fail "git has no identity to commit with: set user.name and user.email (git config), or GIT_AUTHOR_NAME, GIT_AUTHOR_EMAIL, GIT_COMMITTER_NAME and GIT_COMMITTER_EMAIL as ml-pipeline.yml's record job does; nothing committed"

tested="$(git rev-parse HEAD)"
git fetch -q "$remote" "$branch" || fail "cannot fetch $branch from $remote: nothing committed"
upstream="$(git rev-parse FETCH_HEAD)"
git merge-base --is-ancestor "$tested" "$upstream" || \
  fail "$branch has commits $remote/$branch lacks ($(git rev-parse --short=12 HEAD)): push or drop them first; nothing committed"

run="by hand"
if [ -n "${GITHUB_RUN_ID:-}" ]; then run="${GITHUB_SERVER_URL:-https://github.com}/${GITHUB_REPOSITORY:-}/actions/runs/$GITHUB_RUN_ID"; fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export GIT_INDEX_FILE="$scratch/index"  # the commit is built beside the checkout's own index and tree
for attempt in 1 2 3; do
  git read-tree "$upstream"
  git add -A -- "${files[@]}"
  tree="$(git write-tree)"
  if [ "$tree" = "$(git rev-parse "$upstream^{tree}")" ]; then
    say "$remote/$branch already holds this $lock and these metrics: nothing to commit"
    exit 0
  fi
  message="dvc.lock and metrics of the pipeline run on ${tested:0:12} [skip ci]

What the ML pipeline ran on commit $tested recorded: the data and model versions (dvc.lock) and the
metrics it wrote. Committed by make commit-lock ($run)."
  if [ "$upstream" != "$tested" ]; then
    message="$message
$branch had moved on to ${upstream:0:12} meanwhile: these files are the run's, as it wrote them."
  fi
  commit="$(git commit-tree "$tree" -p "$upstream" -m "$message")"
  if git push -q "$remote" "$commit:refs/heads/$branch"; then
    break
  fi
  [ "$attempt" -lt 3 ] || fail "the push to $remote/$branch was refused 3 times (a protected branch? README, CI/CD)"
  say "the push lost a race; again on the new $remote/$branch"
  git fetch -q "$remote" "$branch"
  upstream="$(git rev-parse FETCH_HEAD)"
done
unset GIT_INDEX_FILE

if [ "$upstream" = "$tested" ]; then
  git update-ref "refs/heads/$branch" "$commit" "$tested"
  git reset -q  # the index to the new commit; the tree already holds its files
  say "committed and pushed $(git rev-parse --short=12 "$commit") to $remote/$branch: ${files[*]}"
else
  say "committed and pushed $(git rev-parse --short=12 "$commit") to $remote/$branch on top of ${upstream:0:12}" \
      "(it had moved on since ${tested:0:12}): ${files[*]}; this checkout's $branch is behind it (git pull)"
fi
