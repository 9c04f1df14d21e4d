"""The parts of GitHub's webhook payloads Molt reads, as declared models (PLATFORMS.md lists
the fields). A delivery whose field has another type than GitHub gives it (``"changes": []``,
``"pull_request": []``) does not fit and is refused with the field named, rather than read as
if the field were absent; fields Molt does not read are ignored, whatever they hold.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.payloads import Payload as _Part


class Repository(_Part):
    full_name: str = ""


class User(_Part):
    login: str = ""
    type: str | None = None


class Label(_Part):
    name: str = ""


class PullLink(_Part):
    """``issue.pull_request``: there on a pull request's issue (its fields are links)."""


class Issue(_Part):
    number: int
    title: str | None = None
    body: str | None = None
    labels: list[Label] | None = None
    pull_request: PullLink | None = None


class Comment(_Part):
    id: int
    body: str | None = None
    updated_at: str | None = None


class Change(_Part):
    previous: str | None = Field(None, alias="from")


class Changes(_Part):
    body: Change | None = None


class Ref(_Part):
    sha: str | None = None
    ref: str | None = None


class PullRequest(_Part):
    number: int = 0
    title: str | None = None
    merged: bool | None = None
    merge_commit_sha: str | None = None
    merged_by: User | None = None
    head: Ref | None = None
    base: Ref | None = None


class CheckSuite(_Part):
    head_sha: str | None = None


class Envelope(_Part):
    """What every delivery is first read for: which repository, and what happened."""

    action: str | None = None
    repository: Repository | None = None


class Delivery(Envelope):
    """An event Molt acts on: ``issues``, ``issue_comment``, or one about a pull request."""

    sender: User | None = None
    issue: Issue | None = None
    label: Label | None = None
    comment: Comment | None = None
    changes: Changes | None = None
    pull_request: PullRequest | None = None
    check_suite: CheckSuite | None = None
    sha: str | None = None
