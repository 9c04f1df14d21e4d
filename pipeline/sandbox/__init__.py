"""Running a target's tests where they can do no harm, and what the runs said.

``confinement`` builds the sandbox (bubblewrap: namespaces, hidden credentials, limits);
``reaper`` ends what a run left behind when there is no sandbox; ``validation`` runs a
phase's test command in it; ``progress`` reads a run's output as it goes; ``reruns`` runs
failed tests once more to tell flaky ones from broken ones; ``records`` remembers runs by
commit and by what ran.

Imports only the leaves at the top of pipeline/.
"""
