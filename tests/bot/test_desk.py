"""The desk's verb table: every verb of the grammar reaches what it names."""

from __future__ import annotations

from bot.commands import OPERATOR_VERBS, VERBS
from bot.desk import BY_VERB, Desk


def test_every_operator_verb_has_its_own_entry_and_never_becomes_a_request() -> None:
    assert BY_VERB.keys() >= OPERATOR_VERBS
    assert Desk._ask not in [BY_VERB[verb] for verb in OPERATOR_VERBS]


def test_only_deploy_and_words_become_a_new_request() -> None:
    assert VERBS - BY_VERB.keys() == {"deploy"}
    assert {"help", "answer", "invalid"} <= BY_VERB.keys()
