"""Minutes of other buildings than the fixture's, in Dutch and English, for the summary task's tests.

Written the way syndics write them: numbered items with words before the number, amounts as
`€ 12.500,00` (Dutch) or `€27,600.00` (English), dates with month names, counts of votes with
thousands separators, a rejected item, an item without a vote, and closing lines.
"""

# Dashes and apostrophes as minutes print them (en dash, curly quote) are kept on purpose.
# ruff: noqa: RUF001
from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"
TILLEULS = FIXTURES / "pv-ag-2025-les-tilleuls.txt"
EXPECTED = FIXTURES / "expected.json"

DE_LINDEN_NL = """NOTULEN VAN DE GEWONE ALGEMENE VERGADERING
VME Residentie De Linden — Lindenlei 27, 2018 Antwerpen — KBO 0712.345.678
Vergadering van donderdag 12 juni 2025 om 19.30 uur in de vergaderzaal van het gelijkvloers.

Aanwezigheden: 18 van de 26 mede-eigenaars zijn aanwezig of vertegenwoordigd, samen 8.580 aandelen op 10.000. Het quorum is bereikt en de vergadering kan geldig beraadslagen.
Bureau: Dhr. Marc Wouters wordt verkozen tot voorzitter. Mevr. Els Van den Broeck is secretaris. De syndicus, Immobeheer BV, wordt vertegenwoordigd door Dhr. Tom Maes.

Punt 1: Goedkeuring van de jaarrekening 2024
De commissaris van de rekeningen licht zijn verslag toe. De lasten van het boekjaar bedragen € 36.842,15 tegenover een begroting van € 35.000,00. De jaarrekening wordt goedgekeurd met 7.450 stemmen voor, 820 stemmen tegen en 310 onthoudingen, bij gewone meerderheid.

Punt 2: Kwijting aan de syndicus en de commissaris van de rekeningen
Kwijting wordt verleend aan de syndicus en aan de commissaris van de rekeningen met eenparigheid van stemmen.

Punt 3: Renovatie van de voorgevel
Er werden twee offertes ontvangen: Bouwwerken Janssens BV (€ 84.300,00 excl. btw) en Gevelrenovatie Peeters NV (€ 91.750,00 excl. btw). De algemene vergadering beslist de offerte van Bouwwerken Janssens BV voor € 84.300,00 excl. btw te aanvaarden. Besluit genomen met een tweederdemeerderheid: 6.120 stemmen voor, 2.150 tegen, 310 onthoudingen. De werken worden gefinancierd door het reservefonds ten belope van € 40.000,00 en door een bijzondere opvraging van € 44.300,00, te betalen uiterlijk op 30 september 2025.

Punt 4: Plaatsing van een tweede lift
Het voorstel om een tweede lift te plaatsen voor € 12.500,00 per verdieping wordt verworpen met 3.200 stemmen voor, 5.060 tegen en 320 onthoudingen. Vereiste meerderheid: tweederde.

Punt 5: Begroting 2025 en reservefonds
De begroting voor 2025 wordt vastgesteld op € 38.000,00 en de bijdrage aan het reservefonds op € 4.000,00 per jaar. Goedgekeurd met 7.900 stemmen voor en 680 tegen. Het eerste voorschot moet betaald worden vóór 30 juni 2025.

Punt 6: Zonnepanelen op het dak
Mevr. Claes stelt voor zonnepanelen op het platte dak te plaatsen. De syndicus zal een studie laten uitvoeren en die voorleggen op de volgende vergadering. Geen stemming.

Punt 7: Varia
De fietsenberging wordt in juli opnieuw geschilderd.

De vergadering wordt gesloten om 22.05 uur.
De voorzitter, Marc Wouters — De secretaris, Els Van den Broeck — De syndicus, Immobeheer BV
"""

PARK_VIEW_EN = """MINUTES OF THE ANNUAL GENERAL MEETING
Association of Co-owners Park View Residence, Rue du Parc 12, 1000 Brussels
Held on 24 April 2025 at 6.30 pm in the residents' lounge.

Attendance: 31 of the 40 co-owners were present or represented, holding 8,120 of the 10,000 shares. The quorum being reached, the meeting was validly constituted.
Ms Laura Hughes was elected chair and Mr Pieter De Smet secretary. The managing agent, Brussels Property Management SRL, was represented by Mr Omar Haddad.

Item 1 – Approval of the 2024 accounts
The auditor presented her report. Charges for the year amounted to €52,180.40 against a budget of €50,000.00. The accounts were approved by 7,210 votes for, 640 against and 150 abstentions (simple majority).

Item 2 – Roof waterproofing
Three quotes were received: Roofing Solutions SRL (€27,600.00 excl. VAT), Top Toit SA (€31,200.00 excl. VAT) and Dakwerken Claes BV (€29,950.00 excl. VAT). The meeting resolved to award the works to Roofing Solutions SRL for €27,600.00 excl. VAT. Resolution carried by a two-thirds majority: 6,050 votes for, 1,800 against, 270 abstentions. The works will be paid from the reserve fund and must be completed by 30 June 2025.

Item 3 – Conversion of the ground-floor caretaker's flat into an office
The proposal to convert the flat and let it for €1,150.00 per month was rejected: 5,900 votes for, 2,000 against and 220 abstentions, short of the four-fifths majority required.

Item 4 – Budget 2025
The ordinary budget was set at €45,000.00, including €3,500.00 for the reserve fund. For: 7,400; against: 600; abstentions: 120. The first call for funds is due on 1 July 2025.

Item 5 – Bicycle storage
Several owners asked for secure bicycle storage in the basement. The managing agent will obtain quotes for the next meeting. No vote was taken.

Item 6 – Appointment of the managing agent
Brussels Property Management SRL was reappointed for two years at €22.00 per unit per month excl. VAT. Approved unanimously.

There being no further business, the meeting closed at 8.45 pm.
Signed: the chair, Laura Hughes — the secretary, Pieter De Smet
"""
