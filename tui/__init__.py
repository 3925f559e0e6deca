"""busmon's front ends: the typer CLI and the Textual dashboard (imported only when shown)."""
