Feature: gguf files of different quantizations each load and answer, and take memory by their quantization
  SmolLM2 quantized again at test time by llama.cpp's own quantizer, each file served as a model of its own.

  @test001-21
  Scenario: Q4_K_M, Q5_K_M and Q8_0 files each load and answer through the queen
    Given SmolLM2 quantized again as Q4_K_M, Q5_K_M and Q8_0
    When a fleet serving each of them with one worker is applied
    Then each answers a chat through the queen
    And the catalog names each one's quantization
    And the files grow from Q4_K_M to Q5_K_M to Q8_0, and so does the memory preflight counts for them
