// LoRAtorio: Alt+click a card on the Lora tab to insert <loratorio:NAME:STRENGTH> instead of <lora:...>.
// The WebUI's cards call the global cardClicked(tabname, textToAdd, textToAddNegative, allowNegativePrompt)
// from their onclick; wrapping it keeps every other behaviour (toggling a tag off, negative text).
(function () {
    function loratorioTag(text) {
        return text.replace(/<lora:/g, "<loratorio:");
    }

    function installCardHook() {
        const original = window.cardClicked;
        if (typeof original !== "function" || original.loratorio) {
            return;
        }
        const wrapped = function (tabname, textToAdd, textToAddNegative, allowNegativePrompt) {
            const ev = window.event;
            if (ev && ev.altKey && typeof textToAdd === "string" && textToAdd.indexOf("<lora:") === 0) {
                textToAdd = loratorioTag(textToAdd);
            }
            return original(tabname, textToAdd, textToAddNegative, allowNegativePrompt);
        };
        wrapped.loratorio = true;
        window.cardClicked = wrapped;
    }

    if (typeof onUiLoaded === "function") {
        onUiLoaded(installCardHook);
    }
    window.loratorioTag = loratorioTag;
})();
