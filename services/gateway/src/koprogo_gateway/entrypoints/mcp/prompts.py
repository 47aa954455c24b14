"""The MCP prompts: the seed chatbot's quick actions, in French (the PWA's language)."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import MCPServer

from koprogo_gateway.domain.charge_share import charge_share, parse_decimal


def resumer_pv(texte: str) -> str:
    """Résumer un PV : les décisions, votes, montants et échéances d'un procès-verbal d'AG."""
    return (
        "Résume ce procès-verbal d'assemblée générale de copropriété en français. "
        "Liste les décisions prises avec leurs votes, les montants, les échéances et les points reportés. "
        "N'invente rien.\n\n"
        f"{texte}"
    )


def traduire(texte: str, langue: str = "nl") -> str:
    """Traduire : un document de la copropriété en néerlandais, français ou anglais."""
    names = {"fr": "français", "nl": "néerlandais", "en": "anglais"}
    return (
        f"Traduis fidèlement ce document en {names.get(langue, langue)}, en gardant la mise en forme, "
        "les montants et les noms propres. Réponds uniquement par la traduction.\n\n"
        f"{texte}"
    )


def calculer_charges(montant: str, quotites: str, total_quotites: str = "10000") -> str:
    """Calculer les charges : la part d'un copropriétaire selon ses quotités."""
    amount, owned, total = parse_decimal(montant), parse_decimal(quotites), parse_decimal(total_quotites)
    share = charge_share(amount, owned, total)
    return (
        "Explique simplement à un copropriétaire comment se calcule sa part des charges communes.\n"
        f"Montant à répartir : {amount} €. Ses quotités : {owned} sur {total}.\n"
        f"Calcul : {amount} € x {owned} / {total} = {share} €.\n"
        "Rappelle que la répartition suit les quotités de l'acte de base, sauf clé de répartition "
        "particulière votée en assemblée générale."
    )


PROMPTS = (
    (resumer_pv, "Résumer un PV"),
    (traduire, "Traduire"),
    (calculer_charges, "Calculer les charges"),
)


def register_prompts(server: MCPServer[Any]) -> None:
    for prompt, title in PROMPTS:
        server.prompt(title=title)(prompt)
